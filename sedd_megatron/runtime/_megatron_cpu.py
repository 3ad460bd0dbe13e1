"""Megatron-side CPU patches, applied by :func:`sedd_megatron.runtime.enable_cpu_megatron`.

Imports Megatron at module load, so it is imported only from that function. Each patch is
here because a CPU run of megatron-core 0.19.2 failed without it:

- :class:`CpuRNGStatesTracker`: the tensor-parallel RNG tracker keeps CUDA generator states and
  its setter is a lazy CUDA call that never runs on CPU; attention forks the tracker on every
  call. This tracker forks the CPU generator instead, seeded as Megatron seeds it (data-parallel
  seed, tensor-parallel seed = seed + 2718 + tp_rank, ...), since ``add`` receives those seeds.
- ``_get_cuda_rng_state``/``_set_cuda_rng_state`` (activation recompute, ``_fork_rng``) read and
  write the CPU generator; the setter is otherwise a lazy CUDA call that silently never runs,
  so recomputation would replay different dropout masks.
- Megatron's data loaders (``build_pretraining_data_loader``) get a generator of their own: a
  ``DataLoader`` draws its iterator's base seed from torch's default generator, which on CPU is
  also the "CUDA" one that dropout draws from. On a GPU that draw leaves the CUDA generator
  alone; here it shifted every dropout mask, and a resumed run builds its iterators after
  loading the checkpoint's RNG state, so its masks differed from an uninterrupted run's.
  (Megatron's checkpoints already hold that state and the tracker's: ``rng_state``.)
- ``initialize_megatron`` called by ``pretrain()`` gets ``allow_no_cuda=True`` (it asserts CUDA);
  ``get_device_arch_version`` returns 0 (``validate_args`` queries the GPU's properties at
  TP > 1). (The dataset helpers' start-up fix applies on every device:
  :mod:`sedd_megatron.runtime.upstream_fixes`.)
- The torch norm of the local layer spec accepts sequence parallelism (see
  :mod:`sedd_megatron.runtime.norm`).
"""

from __future__ import annotations

import contextlib
import functools

import torch
from megatron.core.tensor_parallel import random as mcore_random

from sedd_megatron.runtime.norm import install_sequence_parallel_torch_norm


class CpuRNGStatesTracker(mcore_random.CudaRNGStatesTracker):
    """Named RNG states for the CPU generator, with the semantics of Megatron's tracker.

    ``fork(name)`` swaps the named state into the CPU default generator, runs the body, stores
    the advanced state back under ``name`` and restores what was there before (nesting works
    as in Megatron: an enclosing fork's state is saved and restored by name).
    """

    def add(self, name, seed):
        """Register a state ``name`` seeded with ``seed`` (each name and seed used once)."""
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(int(seed)).get_state()

    @contextlib.contextmanager
    def fork(self, name=mcore_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        """Run the body with the CPU generator in state ``name``."""
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        outer_name = self._current_state_name
        outer_state = torch.get_rng_state()
        if outer_name != "default-rng":
            self.states_[outer_name] = outer_state
        torch.set_rng_state(self.states_[name])
        self._current_state_name = name
        try:
            yield
        finally:
            if self._current_state_name != name:
                raise Exception(f"rng state {self._current_state_name} is active, not {name}")
            self.states_[name] = torch.get_rng_state()
            if outer_name != "default-rng":
                outer_state = self.states_[outer_name]
            torch.set_rng_state(outer_state)
            self._current_state_name = outer_name


def _get_rng_state(device="cuda", clone=False, graph_safe=False):
    return torch.get_rng_state()


def _set_rng_state(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def _patch_rng() -> None:
    mcore_random.CudaRNGStatesTracker = CpuRNGStatesTracker
    mcore_random._get_cuda_rng_state = _get_rng_state
    mcore_random._set_cuda_rng_state = _set_rng_state
    tracker = mcore_random._CUDA_RNG_STATE_TRACKER
    if tracker is not None and not isinstance(tracker, CpuRNGStatesTracker):
        # A CUDA tracker built before the patch would fail on its first fork: rebuild lazily.
        mcore_random._CUDA_RNG_STATE_TRACKER = None
        mcore_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = False


class CpuPatchError(RuntimeError):
    """An internal the CPU runtime patches is not where it expects (another Megatron version)."""


def _patch_training() -> None:
    try:
        import megatron.training
    except ImportError:  # megatron.training is optional for megatron.core users
        return
    try:  # present but laid out differently: say so rather than skip the patch silently
        import megatron.training.arguments as arguments
        import megatron.training.initialize as initialize
        import megatron.training.training as training
        import megatron.training.utils as training_utils
        import megatron.training.utils.common_utils as common_utils

        for module, name in ((initialize, "initialize_megatron"),) + tuple(
            (m, "get_device_arch_version") for m in (arguments, training_utils, common_utils)
        ):
            getattr(module, name)
    except (ImportError, AttributeError) as err:
        from sedd_megatron.runtime.upstream_fixes import upstream_versions  # lazy: one message

        raise CpuPatchError(
            f"the CPU runtime's training patch does not fit {upstream_versions()}: {err} "
            "(pretrain() on CPU needs it; tested versions: docs/usage.md §8)"
        ) from None
    original = initialize.initialize_megatron
    if not getattr(original, "_sedd_cpu", False):

        @functools.wraps(original)
        def initialize_megatron(*args, **kwargs):
            kwargs["allow_no_cuda"] = True
            return original(*args, **kwargs)

        initialize_megatron._sedd_cpu = True
        for module in (initialize, training, megatron.training):
            module.initialize_megatron = initialize_megatron
    for module in (arguments, training_utils, common_utils):
        module.get_device_arch_version = lambda: 0
    _patch_data_loaders(training)


def _loader_seed() -> int:
    from megatron.training.global_vars import get_args  # lazy: megatron.training is optional

    try:
        return int(get_args().seed)
    except (AssertionError, AttributeError, TypeError):  # no parsed arguments (library use)
        return _DEFAULT_LOADER_SEED


_DEFAULT_LOADER_SEED = 1234  # Megatron's default --seed


def _patch_data_loaders(training) -> None:
    """Megatron's data loaders draw their iterators' seeds from a generator of their own."""
    from megatron.training.datasets import data_samplers  # lazy: megatron.training is optional

    original = data_samplers.build_pretraining_data_loader
    if getattr(original, "_sedd_cpu", False):
        return

    @functools.wraps(original)
    def build_pretraining_data_loader(*args, **kwargs):
        loader = original(*args, **kwargs)
        if isinstance(loader, torch.utils.data.DataLoader) and loader.generator is None:
            # Each iterator draws its base seed (worker seeds) from loader.generator, else from
            # the default generator: the one dropout uses on CPU (see the module docstring).
            loader.generator = torch.Generator().manual_seed(_loader_seed())
        return loader

    build_pretraining_data_loader._sedd_cpu = True
    data_samplers.build_pretraining_data_loader = build_pretraining_data_loader
    training.build_pretraining_data_loader = build_pretraining_data_loader


def patch_megatron() -> None:
    """Apply every Megatron-side CPU patch (idempotent)."""
    _patch_rng()
    install_sequence_parallel_torch_norm()
    _patch_training()
