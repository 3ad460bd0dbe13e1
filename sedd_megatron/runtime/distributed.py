"""Set up and tear down torch.distributed + Megatron model-parallel state for tests and scripts.

:func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``); without it, it starts a one-process world. On a machine
without CUDA it calls :func:`~sedd_megatron.runtime.enable_cpu_megatron` and uses gloo.

Pipeline parallelism on CPU: merge :data:`CPU_PIPELINE_CONFIG` into the model config
(``TransformerConfig(**CPU_PIPELINE_CONFIG, ...)``). With the config default
``batch_p2p_comm=True``, *interleaved* (virtual) pipeline parallelism at PP=2 over gloo gives
silently wrong losses and gradients (batched sends/receives between the same two ranks).
``pretrain()`` derives ``batch_p2p_comm = not overlap_p2p_comm`` and overlap is on by default
for interleaved schedules, so there: do not pass ``--no-overlap-p2p-communication`` on CPU.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch

from sedd_megatron.runtime.cpu import enable_cpu_megatron

#: Model-config overrides every CPU (gloo) pipeline-parallel configuration needs.
CPU_PIPELINE_CONFIG = {"batch_p2p_comm": False}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def single_process_env() -> None:
    """Without torchrun's environment, describe a one-process world on a free local port."""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def init_distributed(
    tp: int = 1,
    pp: int = 1,
    seed: int = 1234,
    vpp: int | None = None,
    cp: int = 1,
    timeout_s: float = 120.0,
    cpu: bool | str = "auto",
) -> None:
    """Initialise the default process group, Megatron's parallel state and its RNG seeds.

    For entry points (scripts, tools, tests): library code takes an initialised world instead.
    ``tp``/``pp``/``vpp``/``cp`` are the tensor, pipeline, virtual-pipeline and context parallel
    sizes; data parallelism takes the rest of the world. Seeding follows Megatron: the default
    generator gets ``seed``, the tensor-parallel RNG state ``seed + 2718 + tp_rank``.
    ``cpu``: "auto" (or True) installs the CPU shim (:func:`enable_cpu_megatron`) where there
    is no CUDA; False never does (Megatron then needs CUDA).
    """
    from megatron.core import parallel_state, tensor_parallel

    if cpu not in ("auto", True, False):
        raise ValueError(f"cpu must be 'auto', True or False, got {cpu!r}")
    on_cpu = enable_cpu_megatron() if cpu else False
    if not on_cpu and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device and cpu=False: Megatron cannot run here")
    if not torch.distributed.is_initialized():
        single_process_env()
        if not on_cpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(
            backend="gloo" if on_cpu else "nccl", timeout=timedelta(seconds=timeout_s)
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        context_parallel_size=cp,
    )
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    """Undo :func:`init_distributed`: drop Megatron's groups, then the default process group."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def world_is_initialized() -> bool:
    """Whether torch.distributed and Megatron's model-parallel state are both initialised."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    from megatron.core import parallel_state

    return parallel_state.model_parallel_is_initialized()


def world_layout() -> tuple[int, int] | None:
    """(TP, PP) of the initialised world, or None without one."""
    if not world_is_initialized():
        return None
    from megatron.core import parallel_state as ps

    return (
        ps.get_tensor_model_parallel_world_size(),
        ps.get_pipeline_model_parallel_world_size(),
    )


@contextmanager
def world(
    tp: int | None = None,
    pp: int | None = None,
    *,
    seed: int = 1234,
    vpp: int | None = None,
    cp: int = 1,
    cpu: bool | str = "auto",
    timeout_s: float = 120.0,
) -> Iterator[None]:
    """The distributed world of an entry point: start it for the body, tear it down after.

    The only place the package starts torch.distributed + Megatron's parallel state (and, on a
    machine without CUDA, installs the CPU shim): ``pretrain_sedd.py``, ``tools/``, examples
    and tests use it; library functions take an initialised world or a plain model.

        with sedd_megatron.runtime.world(tp=2, pp=1, seed=0):
            model = open_model(checkpoint_dir)
            ...

    The world spans torchrun's processes (``WORLD_SIZE``), or just this process without
    torchrun. Inside an initialised world the body just runs in it (nothing is torn down);
    ``tp``/``pp`` then must match it (None accepts any). A new world gets ``tp or 1`` x
    ``pp or 1``; ``WORLD_SIZE`` must be a multiple of their product. Where the process group
    already exists without Megatron's model-parallel state (a test switching layouts inside one
    torchrun job), only that state is built, and only that state is torn down after.
    """
    have = world_layout()
    if have is not None:
        if (tp, pp) != (None, None) and have != (tp or 1, pp or 1):
            raise ValueError(f"the running world has TP={have[0]}, PP={have[1]}, not {tp}/{pp}")
        yield
        return
    tp, pp = tp or 1, pp or 1
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size % (tp * pp):
        raise ValueError(
            f"TP={tp} x PP={pp} needs a multiple of {tp * pp} processes, got {size}: run under "
            f"torchrun --nproc_per_node={tp * pp}"
        )
    started_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    init_distributed(tp=tp, pp=pp, seed=seed, vpp=vpp, cp=cp, timeout_s=timeout_s, cpu=cpu)
    try:
        yield
    finally:
        if started_group:
            destroy_distributed()
        else:
            from megatron.core import parallel_state  # lazy: imports megatron

            parallel_state.destroy_model_parallel()
