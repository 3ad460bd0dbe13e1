"""A torch LayerNorm/RMSNorm builder that supports sequence parallelism.

Megatron's local layer spec builds its norms with ``WrappedTorchNorm``, which asserts
``not config.sequence_parallel``: without Apex/TE there is no norm that works with sequence
parallelism. Under sequence parallelism each tensor-parallel rank normalises a different slice
of the sequence, so the (replicated) norm weights get partial gradients; Megatron's
``finalize_model_grads`` all-reduces them across the TP group for every parameter carrying
``sequence_parallel=True``. :class:`SequenceParallelTorchNorm` sets that attribute, which is
all the support a torch norm needs. (Any other TP-replicated parameter used on
sequence-parallel activations, e.g. adaLN modulation, needs the same attribute.)
"""

from __future__ import annotations

import torch


def mark_sequence_parallel(module: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Tag every parameter of ``module`` so Megatron all-reduces its grads across TP ranks."""
    for param in module.parameters():
        param.sequence_parallel = enabled
    return module


class SequenceParallelTorchNorm:
    """Builds ``torch.nn.LayerNorm``/``RMSNorm`` per ``config.normalization`` (like Megatron's
    ``WrappedTorchNorm``), allowing sequence parallelism by tagging the parameters."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **unused_kwargs):
        if config.layernorm_zero_centered_gamma or config.persist_layer_norm:
            raise ValueError("zero-centered gamma and persist_layer_norm need Apex/TE norms")
        if config.normalization == "LayerNorm":
            norm = torch.nn.LayerNorm(hidden_size, eps=eps)
        elif config.normalization == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps)
        else:
            raise ValueError(f"unsupported normalization {config.normalization!r}")
        return mark_sequence_parallel(norm, bool(config.sequence_parallel))


def install_sequence_parallel_torch_norm() -> None:
    """Make Megatron's ``WrappedTorchNorm`` (local spec) build :class:`SequenceParallelTorchNorm`
    when ``config.sequence_parallel`` is set; other configurations keep Megatron's behaviour.
    Patching ``__new__`` in place reaches layer specs that already hold the class."""
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    if getattr(WrappedTorchNorm, "_sedd_sp_patched", False):
        return
    original_new = WrappedTorchNorm.__new__

    def __new__(cls, config, hidden_size, eps=1e-5, **kwargs):
        if config.sequence_parallel:
            return SequenceParallelTorchNorm(config, hidden_size, eps)
        return original_new(cls, config, hidden_size, eps, **kwargs)

    WrappedTorchNorm.__new__ = staticmethod(__new__)
    WrappedTorchNorm._sedd_sp_patched = True
