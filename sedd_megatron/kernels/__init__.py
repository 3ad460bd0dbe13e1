"""Fused Triton kernels (forward and backward) for the element-wise parts of a DiT/adaLN layer.

Pure PyTorch + Triton (no Megatron): LayerNorm or RMSNorm + adaLN modulation (``adaln``), gated
residual with bias and dropout (``residual``), bias + tanh-GELU (``gelu``) and the score-entropy
shard statistics (``score_entropy_stats``). Each op runs its Triton kernels when triton is
available and the tensors are on CUDA (or, in tests, on the CPU under Triton's interpreter: see
``dispatch``), else its unfused torch reference; ``fused=False`` forces the reference.
"""

from .adaln import layer_norm_modulate, layer_norm_modulate_reference
from .dispatch import HAVE_TRITON, interpreting, triton_usable
from .gelu import bias_gelu, bias_gelu_reference
from .residual import gated_residual, gated_residual_reference
from .score_entropy_stats import score_entropy_stats_triton

__all__ = [
    "HAVE_TRITON",
    "bias_gelu",
    "bias_gelu_reference",
    "gated_residual",
    "gated_residual_reference",
    "interpreting",
    "layer_norm_modulate",
    "layer_norm_modulate_reference",
    "score_entropy_stats_triton",
    "triton_usable",
]
