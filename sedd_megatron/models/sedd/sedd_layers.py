"""Building blocks of the SEDD transformer on Megatron-Core.

Each module computes exactly what its counterpart in the reference SEDD computes
(docs/math.md §8); tensor layout is Megatron's [sequence, batch, hidden].

The element-wise work of a block runs in fused kernels (``sedd_megatron.kernels``: LayerNorm +
adaLN modulation, bias + tanh-GELU, gate * dropout(branch + bias) + residual, forward and
backward) where they are usable (CUDA with Triton), else in the unfused torch code, which is also
what ``SEDDTransformerConfig.fused_kernels=False`` (``--no-sedd-fused-kernels``) selects.

Parameters that every tensor-parallel rank holds in full (norm weights, the adaLN projections,
the noise-level embedder) carry ``sequence_parallel=True`` when sequence parallelism is on, so
Megatron's ``finalize_model_grads`` sums their gradients over the TP group (each rank only sees
its slice of the sequence). The noise-level embedder is replicated on every pipeline stage and
carries ``pipeline_parallel=True``, so its gradients are also summed across stages
(``SEDDConfig.has_cond_embedder``).
"""

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer

from sedd_megatron.kernels import bias_gelu, gated_residual, layer_norm_modulate


def param_device(config: TransformerConfig) -> torch.device:
    """Where Megatron's own layers allocate parameters for this config."""
    if config.use_cpu_initialization:
        return torch.device("cpu")
    return torch.device(torch.cuda.current_device())


def mark_replicated(module: torch.nn.Module, config: TransformerConfig, across_pipeline=False):
    """Tag the parameters of a TP-replicated module for Megatron's gradient reductions."""
    for param in module.parameters():
        param.sequence_parallel = config.sequence_parallel
        if across_pipeline:
            param.pipeline_parallel = True


def replicated_linear(config: TransformerConfig, in_features: int, out_features: int, zero=False):
    """A plain Linear held in full by every TP rank (torch default init, or zeros)."""
    linear = torch.nn.Linear(
        in_features, out_features, device=param_device(config), dtype=config.params_dtype
    )
    if zero:
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
    mark_replicated(linear, config)
    return linear


def fused_kernels(config: TransformerConfig) -> bool:
    """Whether the config asks for the fused kernels (they run where usable; see the module)."""
    return getattr(config, "fused_kernels", True)


class SEDDLayerNorm(torch.nn.Module):
    """adaLN-modulated norm: N(x) * weight * (1 + scale) + shift, in x's dtype.

    N is LayerNorm without affine bias (the reference), or RMSNorm when the config's
    ``normalization`` is "RMSNorm"; statistics are float32, the modulation is formed in float32
    (``1 + scale`` included) and rounded once to x's dtype. shift and scale: [b, H].
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_):
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.rms = config.rms_norm
        self.fused = fused_kernels(config)
        self.weight = torch.nn.Parameter(
            torch.ones(hidden_size, device=param_device(config), dtype=config.params_dtype)
        )
        mark_replicated(self, config)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return layer_norm_modulate(
            x, self.weight, shift, scale, self.eps, fused=self.fused, rms=self.rms
        )


class SEDDHeadNorm(torch.nn.Module):
    """The QK norm (``qk_layernorm``): the config's norm over each head's dim, times a weight.

    LayerNorm without bias or RMSNorm, statistics in float32, one rounding to x's dtype; x is
    [s, b, heads, head_dim]. Megatron's SelfAttention builds it (``q_layernorm`` and
    ``k_layernorm``) and ``finalize_model_grads`` sums its gradients over the TP group (each
    rank sees only its heads).
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_):
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.rms = config.rms_norm
        self.weight = torch.nn.Parameter(
            torch.ones(hidden_size, device=param_device(config), dtype=config.params_dtype)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        if self.rms:
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        else:
            h = F.layer_norm(h, (self.hidden_size,), eps=self.eps)
        return (h * self.weight.float()).to(x.dtype)


class TimestepEmbedder(torch.nn.Module):
    """Noise-level conditioning: sinusoid of sigma (cos first) -> Linear -> SiLU -> Linear.

    ``forward`` returns c = SiLU(mlp(temb(sigma))): the reference applies SiLU once, outside the
    blocks, and its adaLN projections are bare Linears. Computed in float32 on every stage.
    """

    def __init__(self, config, cond_dim: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        device = param_device(config)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(frequency_embedding_size, cond_dim, device=device),
            torch.nn.SiLU(),
            torch.nn.Linear(cond_dim, cond_dim, device=device),
        )
        self.mlp.to(config.params_dtype)
        mark_replicated(self, config, across_pipeline=True)

    def sinusoid(self, sigma: torch.Tensor, max_period: float = 10000.0) -> torch.Tensor:
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(
            -math.log(max_period)
            * torch.arange(half, dtype=torch.float32, device=sigma.device)
            / half
        )
        angles = sigma.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        temb = self.sinusoid(sigma).to(self.mlp[0].weight.dtype)
        return F.silu(self.mlp(temb))


class ConstantConditioning(torch.nn.Module):
    """The conditioning vector c of a time-independent model (``time_conditioning="none"``):
    a learned constant ``cond`` [cond_dim], ones at init (the zero-initialised adaLN projections
    need a nonzero c to get a gradient). Replicated on every TP rank and pipeline stage, like
    the noise-level embedder it replaces. forward(batch) -> c [batch, cond_dim] (no SiLU).
    """

    def __init__(self, config, cond_dim: int):
        super().__init__()
        self.cond = torch.nn.Parameter(
            torch.ones(cond_dim, device=param_device(config), dtype=config.params_dtype)
        )
        mark_replicated(self, config, across_pipeline=True)

    def forward(self, batch: int) -> torch.Tensor:
        return self.cond[None].expand(batch, -1)


class BidirectionalAttention(MegatronModule):
    """Core attention without a mask via torch's scaled_dot_product_attention.

    Takes Megatron's [s, b, heads, head_dim] query/key/value for the heads of this TP rank and
    returns [s, b, heads * head_dim]. With grouped-query attention key and value hold fewer
    heads (this rank's query groups); query head j attends with key/value head
    j // (heads / groups), as in Megatron's own core attention. Attention dropout (0 in SEDD)
    draws from the model-parallel RNG so TP ranks drop independently. Under context parallelism
    each rank holds part of the sequence: keys and values are all-gathered over the CP group
    (backward: reduce-scatter), and the local queries attend to all of them (bidirectional
    attention needs no causal order).
    """

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type, **kwargs):
        super().__init__(config=config)
        self.dropout = config.attention_dropout
        self.scale = kwargs.get("softmax_scale")
        pg_collection = kwargs.get("pg_collection")
        self.cp_group = getattr(pg_collection, "cp", None)
        if self.cp_group is None:
            self.cp_group = parallel_state.get_context_parallel_group(check_initialized=False)

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, **kwargs):
        if attention_mask is not None:
            raise ValueError("SEDD attention is bidirectional: attention_mask must be None")
        if kwargs.get("packed_seq_params") is not None:
            raise ValueError("packed sequences are not supported by SEDD's local attention")
        if self.cp_group is not None and self.cp_group.size() > 1:
            key, value = (
                tensor_parallel.gather_from_sequence_parallel_region(t, group=self.cp_group)
                for t in (key, value)
            )
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
        dropout = self.dropout if self.training else 0.0
        grouped = k.shape[1] != q.shape[1]  # SDPA maps query head j to kv head j // (h / g)
        with tensor_parallel.get_cuda_rng_tracker().fork() if dropout else nullcontext():
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, scale=self.scale, enable_gqa=grouped
            )
        s, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)


class SEDDMLP(MLP):
    """Megatron's MLP (fc1 -> tanh-GELU -> fc2) with fc1's bias add and the GELU fused; or, with
    ``gated_linear_unit``, SwiGLU: fc1 gives [gate | up] (each TP rank its slice of both) and
    the activation is silu(gate + b_gate) * (up + b_up), in Megatron's fused bias-SwiGLU when
    ``bias_activation_fusion`` is set (pretrain's default), else in torch.

    Returns (output, fc2 bias) like Megatron's MLP; the layer adds the bias in its residual.
    """

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if per_token_scale is not None:
            raise ValueError("SEDD's dense MLP takes no per-token scale")
        intermediate, bias = self.linear_fc1(hidden_states)
        if not self.config.gated_linear_unit:
            intermediate = bias_gelu(intermediate, bias, fused=fused_kernels(self.config))
        elif self.config.bias_activation_fusion:
            intermediate = bias_swiglu_impl(intermediate, bias)
        else:
            gate, up = (intermediate if bias is None else intermediate + bias).chunk(2, dim=-1)
            intermediate = F.silu(gate) * up
        return self.linear_fc2(intermediate)


class SEDDTransformerLayer(TransformerLayer):
    """A DDiT block: adaLN-modulated pre-norm attention and MLP with gated residuals.

    x += gate_msa * dropout(attn(modulate(LN1(x), shift_msa, scale_msa)))
    x += gate_mlp * dropout(mlp(modulate(LN2(x), shift_mlp, scale_mlp)))

    The conditioning vector c (batch, cond_dim) arrives through Megatron's ``context`` argument,
    which TransformerBlock threads through every layer (and through activation recomputation).
    """

    def __init__(self, config, submodules, layer_number: int = 1, **kwargs):
        super().__init__(config=config, submodules=submodules, layer_number=layer_number, **kwargs)
        self.adaLN_modulation = replicated_linear(
            config, config.cond_dim, 6 * config.hidden_size, zero=True
        )

    def _residual(self, branch, bias, gate, residual) -> torch.Tensor:
        """residual + gate * dropout(branch + bias)."""
        return gated_residual(
            branch,
            bias,
            gate,
            residual,
            p=self.hidden_dropout,
            training=self.training,
            fused=fused_kernels(self.config),
        )

    def forward(self, hidden_states, attention_mask=None, context=None, **kwargs):
        x = hidden_states
        modulation = self.adaLN_modulation(context.to(self.adaLN_modulation.weight.dtype))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, -1)

        h = self.input_layernorm(x, shift_msa, scale_msa)
        attn_out, attn_bias = self.self_attention(
            h,
            attention_mask=attention_mask,
            rotary_pos_emb=kwargs.get("rotary_pos_emb"),
            packed_seq_params=kwargs.get("packed_seq_params"),
        )
        x = self._residual(attn_out, attn_bias, gate_msa, x)

        h = self.pre_mlp_layernorm(x, shift_mlp, scale_mlp)
        mlp_out, mlp_bias = self.mlp(h)
        x = self._residual(mlp_out, mlp_bias, gate_mlp, x)
        return x, context


class SEDDFinalLayer(MegatronModule):
    """adaLN-modulated final norm (shift, scale) and the vocab-parallel output projection."""

    def __init__(self, config, vocab_rows_padded: int):
        super().__init__(config=config)
        self.norm_final = SEDDLayerNorm(config, config.hidden_size, config.layernorm_epsilon)
        self.adaLN_modulation = replicated_linear(
            config, config.cond_dim, 2 * config.hidden_size, zero=True
        )
        self.linear = tensor_parallel.ColumnParallelLinear(
            config.hidden_size,
            vocab_rows_padded,
            config=config,
            init_method=torch.nn.init.zeros_,
            bias=True,
            gather_output=False,
            skip_bias_add=False,
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c.to(self.adaLN_modulation.weight.dtype)).chunk(2, -1)
        logits, _ = self.linear(self.norm_final(x, shift, scale))
        return logits
