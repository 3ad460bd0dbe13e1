"""Configuration of the SEDD model type: Megatron's TransformerConfig plus the SEDD fields.

Defaults follow the reference implementation (docs/math.md §8): pre-norm LayerNorm
without bias (eps 1e-5, fp32), no bias on qkv and attention output, biased 4H MLP with
tanh-GELU, rotary on the full head dim, bidirectional attention without dropout, hidden dropout
0.1 before the adaLN gate.

Megatron's backbone options that SEDD supports (docs/math.md §8.8) keep their Megatron
fields: ``normalization="RMSNorm"``, ``gated_linear_unit`` with ``activation_func=F.silu``
(SwiGLU, biased like the reference MLP), ``num_query_groups`` (grouped-query attention),
``qk_layernorm``, ``kv_channels``, ``ffn_hidden_size``, ``layernorm_epsilon``; ``rotary_base``
is added here (Megatron passes it to GPTModel instead).
"""

from dataclasses import dataclass
from functools import partial

import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from sedd_megatron.diffusion import GRAPHS as GRAPH_CLASSES
from sedd_megatron.diffusion import get_graph
from sedd_megatron.errors import ConfigError

GRAPHS = tuple(GRAPH_CLASSES)  # the registered graph names

gelu_tanh = partial(F.gelu, approximate="tanh")


@dataclass
class SEDDTransformerConfig(TransformerConfig):
    """TransformerConfig for SEDD.

    Args (beyond TransformerConfig):
        graph: "absorb" (an extra MASK token, id ``num_tokens``) or "uniform".
        num_tokens: size of the data vocabulary (50257 for GPT-2).
        cond_dim: width of the noise-level conditioning vector c.
        scale_by_sigma: shift the absorb output by -log(e^sigma - 1) - log(V' - 1).
        time_conditioning: "sigma" (the network sees sigma; the reference) or "none"
            (time-independent absorbing SEDD: a learned constant conditioning vector ``cond``
            replaces the sigma embedder, and the log-score is the log-softmax over the data
            tokens minus log(e^sigma - 1); docs/math.md §8.6). "none" needs the absorb graph.
        frequency_embedding_size: width of the sinusoidal embedding of sigma.
        has_cond_embedder: tells Megatron's finalize_model_grads to all-reduce the conditioning
            embedder's gradients across pipeline stages (every stage holds a copy).
        fused_kernels: run the element-wise parts of the layers and the loss in fused kernels
            where they are usable (CUDA with Triton); False forces the unfused torch code
            everywhere (for debugging). Either way the numerics are the same formulas.
    """

    graph: str = "absorb"
    num_tokens: int = 50257
    cond_dim: int = 128
    scale_by_sigma: bool = True
    time_conditioning: str = "sigma"
    frequency_embedding_size: int = 256
    has_cond_embedder: bool = True
    fused_kernels: bool = True
    rotary_base: float = 10000.0

    # Reference semantics as defaults for inherited fields.
    add_bias_linear: bool = False
    add_qkv_bias: bool = False
    activation_func: object = gelu_tanh
    normalization: str = "LayerNorm"
    layernorm_epsilon: float = 1e-5
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.1
    bias_dropout_fusion: bool = False
    bias_activation_fusion: bool = False
    masked_softmax_fusion: bool = False
    apply_rope_fusion: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.graph not in GRAPHS:
            raise ValueError(
                f"SEDDTransformerConfig.graph must be one of {GRAPHS}, got {self.graph!r}"
            )
        if self.num_tokens < 2:
            raise ValueError(
                f"SEDDTransformerConfig.num_tokens must be >= 2, got {self.num_tokens}"
            )
        if self.cond_dim <= 0:
            raise ValueError(
                f"SEDDTransformerConfig.cond_dim must be positive, got {self.cond_dim}"
            )
        if self.frequency_embedding_size <= 0 or self.frequency_embedding_size % 2:
            raise ValueError(
                "SEDDTransformerConfig.frequency_embedding_size must be a positive even number, "
                f"got {self.frequency_embedding_size}"
            )
        if self.scale_by_sigma and not GRAPH_CLASSES[self.graph].sigma_scaling:
            raise ValueError(
                "SEDDTransformerConfig.scale_by_sigma is only defined for the absorb graph"
            )
        if self.time_conditioning not in ("sigma", "none"):
            raise ConfigError(
                "SEDDTransformerConfig.time_conditioning must be 'sigma' or 'none', "
                f"got {self.time_conditioning!r}"
            )
        if self.time_conditioning == "none" and not GRAPH_CLASSES[self.graph].sigma_scaling:
            raise ConfigError(
                "SEDDTransformerConfig.time_conditioning 'none' is only defined for the absorb "
                f"graph, got {self.graph!r}"
            )
        if self.time_conditioning == "none" and not self.scale_by_sigma:
            raise ConfigError(
                "SEDDTransformerConfig.time_conditioning 'none' divides by e^sigma - 1: it needs "
                "scale_by_sigma=True"
            )
        if self.normalization not in ("LayerNorm", "RMSNorm"):
            raise ValueError(
                f"SEDD's norms are LayerNorm or RMSNorm, got normalization={self.normalization!r}"
            )
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_query_groups ({self.num_query_groups}) must divide num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.kv_channels % 2:
            raise ValueError(f"rotary needs an even head dim, got kv_channels={self.kv_channels}")
        if self.gated_linear_unit and self.activation_func is not F.silu:
            raise ValueError("SEDD's gated MLP is SwiGLU: gated_linear_unit needs F.silu")
        if not self.gated_linear_unit and self.activation_func is not gelu_tanh:
            raise ValueError("SEDD's MLP is tanh-GELU or SwiGLU (gated_linear_unit with F.silu)")
        if self.num_moe_experts is not None:
            raise ValueError("SEDD has a dense MLP: num_moe_experts must be None")

    @property
    def rms_norm(self) -> bool:
        return self.normalization == "RMSNorm"

    @property
    def vocab_rows(self) -> int:
        """Rows of the embedding and output layer before padding: V' in docs/math.md §1."""
        return get_graph(self.graph, self.num_tokens).dim

    @property
    def mask_id(self) -> int | None:
        return get_graph(self.graph, self.num_tokens).mask_id
