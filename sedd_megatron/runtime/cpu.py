"""Run Megatron-Core (and ``megatron.training.pretrain``) on a CPU-only machine over gloo.

This is a development/CI path, NOT a training platform: it exists so that the project's
Megatron integration (tensor/pipeline/data parallelism, the distributed optimizer, pipeline
schedules, ``torch_dist`` checkpoints, ``pretrain()``) can be exercised by tests on machines
without a GPU. It is slow, and it is tested against megatron-core 0.18.2 and 0.19.2 (the
support matrix in docs/usage.md §8).

Megatron assumes CUDA in many places. :func:`enable_cpu_megatron` makes those places work on
CPU, each for a failure seen without it (docs/runtime.md §2–4 explains each):

- a process-wide torch function mode (:class:`_CudaToCpuMode`) maps CUDA device requests
  (``device="cuda"``, ``device=torch.cuda.current_device()``, ``.cuda()``, ``.to("cuda")``)
  to CPU, also during autograd's backward pass, and reports ``torch.cuda.*`` names for
  ``Tensor.type()`` called from Megatron (grad clipping and the optimizers assert
  ``'torch.cuda.FloatTensor'``);
- ``torch.cuda`` shims: one device at index 0 (``device_count``/``current_device``/
  ``set_device``; with 0 devices ``initialize_megatron`` silently skips model-parallel init and
  seeding), CUDA RNG get/set/seed mapped to the CPU generator (rerun state machine, checkpoint
  RNG state), dummy streams/events and a no-op ``synchronize`` (DDP, ``get_model``, p2p);
- ``CUDA_DEVICE_MAX_CONNECTIONS=1`` unless set (``validate_args`` asserts it at TP > 1).
- Megatron patches in :mod:`sedd_megatron.runtime._megatron_cpu` (CPU RNG tracker, data
  loaders with a generator of their own, training initialisation, sequence-parallel torch norm).

The default CPU generator stands in for the CUDA one: dropout draws from it and Megatron's
checkpoints save and restore it (``rng_state``: the "CUDA" state and the tracker's states). The
one host-side draw of a training run, a data loader's iterator seed, comes from the loader's own
generator, so a resumed run with dropout repeats an uninterrupted one bit for bit, as on a GPU.

Limits: ``pretrain()`` needs ``--distributed-backend gloo`` and ``--no-persist-layer-norm``
(with ``--transformer-impl local``); pipeline parallelism needs ``batch_p2p_comm=False`` (see
:mod:`sedd_megatron.runtime.distributed`). The mode lives on the calling thread's stack (and
autograd's backward): call the function from the main thread; torch calls made on other threads
are not redirected. Other host-side draws from the default generator (a ``RandomSampler`` of
the caller's own, say) still shift the dropout masks that follow them.

On a machine with CUDA the function does nothing. Importing this module patches nothing.
"""

from __future__ import annotations

import os
import sys

import torch
from torch.overrides import TorchFunctionMode

_STATE: dict[str, object] = {"enabled": False, "mode": None}


def is_cpu_megatron_enabled() -> bool:
    """True once :func:`enable_cpu_megatron` has patched this process."""
    return bool(_STATE["enabled"])


def enable_cpu_megatron() -> bool:
    """Make Megatron-Core and ``megatron.training`` run on CPU over gloo (idempotent).

    Returns False, doing nothing, when CUDA is available; True when the CPU patches are active.
    Call it before building Megatron models or process groups.
    """
    if torch.cuda.is_available():
        return False
    if _STATE["enabled"]:
        return True
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")  # validate_args asserts it at TP > 1
    _patch_torch_cuda()
    mode = _CudaToCpuMode()
    mode.__enter__()  # stays pushed for the life of the process
    _STATE["mode"] = mode
    _run_backward_under(mode)
    from sedd_megatron.runtime import _megatron_cpu  # lazy: imports megatron

    _megatron_cpu.patch_megatron()
    _STATE["enabled"] = True
    return True


# --------------------------------------------------------------------------- device mapping
_CPU = torch.device("cpu")


def _is_cuda_device(device: object) -> bool:
    """Whether a ``device=`` value names a CUDA device (an int index means CUDA in torch)."""
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


def _called_from_megatron() -> bool:
    """Whether the nearest caller outside torch and this module is Megatron code."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name != __name__ and name != "torch" and not name.startswith("torch."):
            return name.startswith("megatron.")
        frame = frame.f_back
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Redirects CUDA device requests to CPU for every torch call made in this process."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type:
            return self._tensor_type(args, kwargs)
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": _CPU}
        if kwargs.get("pin_memory"):  # pinned host memory needs CUDA (rotary under CP asks)
            kwargs = {**kwargs, "pin_memory": False}
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)

    @staticmethod
    def _tensor_type(args, kwargs):
        tensor, rest = args[0], list(args[1:])
        if not rest and not kwargs:
            name = torch.Tensor.type(tensor)
            # Megatron's optimizers and grad clipping assert 'torch.cuda.FloatTensor' & co.
            if name.startswith("torch.") and _called_from_megatron():
                return "torch.cuda." + name[len("torch.") :]
            return name
        if rest and isinstance(rest[0], str):
            rest[0] = rest[0].replace("torch.cuda.", "torch.")
        return torch.Tensor.type(tensor, *rest, **kwargs)


def _run_backward_under(mode: _CudaToCpuMode) -> None:
    """Keep the mode active while autograd runs backward.

    ``Tensor.backward``/``torch.autograd.backward``/``grad`` are dispatched to the mode, and a
    torch function mode is switched off while its handler runs, so without this the whole
    backward pass -- Megatron's autograd functions allocating ``device=current_device()``
    buffers in ``backward`` -- would run unmapped. All three reach ``_engine_run_backward``.
    """
    from torch.autograd import graph

    original = graph._engine_run_backward

    def _engine_run_backward(*args, **kwargs):
        if mode in torch.overrides._get_current_function_mode_stack():
            return original(*args, **kwargs)
        with mode:
            return original(*args, **kwargs)

    graph._engine_run_backward = _engine_run_backward
    torch.autograd._engine_run_backward = _engine_run_backward


# --------------------------------------------------------------------------- torch.cuda shims
class _DummyStream:
    """Stands in for ``torch.cuda.Stream``: CPU work is synchronous, so every call is a no-op."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, stream):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event if event is not None else _DummyEvent()

    def synchronize(self):
        pass

    def query(self):
        return True


class _DummyEvent:
    """Stands in for ``torch.cuda.Event`` (timers, DDP, p2p): records nothing, always done."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, end_event):
        return 0.0


_DEFAULT_STREAM = _DummyStream()


def _set_cpu_rng_state(new_state, device=None):
    torch.set_rng_state(new_state)


def _get_cpu_rng_state(device=None):
    return torch.get_rng_state()


def _cpu_manual_seed(seed):
    torch.default_generator.manual_seed(int(seed))


def _patch_torch_cuda() -> None:
    """Replace the ``torch.cuda`` entry points Megatron calls unconditionally."""
    cuda = torch.cuda
    shims = {
        # With 0 devices initialize_megatron silently skips model-parallel init and seeding.
        "device_count": lambda: 1,
        # Used as device= argument (mapped to CPU by the mode) in 25+ places.
        "current_device": lambda: 0,
        "set_device": lambda device: None,
        # DDP and get_model() use a side stream; p2p communication synchronizes.
        "synchronize": lambda device=None: None,
        "Stream": _DummyStream,
        "Event": _DummyEvent,
        "current_stream": lambda device=None: _DEFAULT_STREAM,
        # The CUDA generator is the CPU one: checkpoint RNG state, rerun state machine. The
        # setters would otherwise be lazy CUDA calls that silently never run.
        "get_rng_state": _get_cpu_rng_state,
        "set_rng_state": _set_cpu_rng_state,
        "manual_seed": _cpu_manual_seed,
    }
    for name, shim in shims.items():
        setattr(cuda, name, shim)
    for name in ("get_rng_state", "set_rng_state", "manual_seed"):
        setattr(cuda.random, name, shims[name])
