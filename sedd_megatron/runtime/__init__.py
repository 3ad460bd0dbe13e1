"""Opt-in runtime support: Megatron-Core on CPU over gloo, and fixes for upstream Megatron bugs.

Nothing here acts on import: torch is patched only when :func:`enable_cpu_megatron` is called,
and Megatron is imported only by the functions that need it.

- :func:`enable_cpu_megatron` lets ``megatron.core`` and ``megatron.training.pretrain()`` run
  on a CPU-only machine (a development/CI path, not a training platform).
- :func:`apply_upstream_fixes` repairs the distributed optimizer's resume with torch Adam.
- :func:`world` (a context manager; :func:`init_distributed` / :func:`destroy_distributed`
  underneath) sets up gloo/NCCL + Megatron model-parallel state from torchrun's environment
  and tears it down: for entry points only (scripts, tools, tests). Library functions take an
  initialised world (:func:`world_is_initialized`) and never start one.
"""

from sedd_megatron.runtime.cpu import enable_cpu_megatron, is_cpu_megatron_enabled
from sedd_megatron.runtime.distributed import (
    CPU_PIPELINE_CONFIG,
    destroy_distributed,
    init_distributed,
    world,
    world_is_initialized,
    world_layout,
)
from sedd_megatron.runtime.upstream_fixes import apply_upstream_fixes, uses_torch_adam_fallback

__all__ = [
    "CPU_PIPELINE_CONFIG",
    "apply_upstream_fixes",
    "destroy_distributed",
    "enable_cpu_megatron",
    "init_distributed",
    "is_cpu_megatron_enabled",
    "uses_torch_adam_fallback",
    "world",
    "world_is_initialized",
    "world_layout",
]
