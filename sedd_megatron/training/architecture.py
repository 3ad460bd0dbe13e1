"""Which of Megatron's architecture flags SEDD trains, which it refuses, and why.

One rule: what pretrain_sedd.py accepts, every tool opens. The model a run trains is described
completely by the published-layout config (``plain.SEDDConfig``: the reference DiT plus the
backbone options of docs/math.md §8.8), so generate, eval, export and import rebuild it
from a checkpoint's saved arguments through :func:`backbone_from_args`; a flag the published
config cannot express is refused here, before training starts (:func:`architecture_problems`).

:data:`SUPPORTED` and :data:`REFUSED` are the table the README shows (a test keeps the two
equal). This module imports nothing heavier than the package's errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Supported:
    flags: str  # as typed on the command line
    what: str  # what SEDD builds for it


@dataclass(frozen=True)
class Refused:
    flags: str
    given: Callable  # args -> bool: the run asks for it
    why: str


def _get(args, name, default=None):
    return getattr(args, name, default)


SUPPORTED = (
    Supported("--swiglu", "SwiGLU MLP, biased like the reference MLP (Megatron's fused "
              "bias-SwiGLU unless --no-bias-swiglu-fusion); default width 8/3 x hidden, "
              "rounded down to a multiple of 64 (Megatron's rule)"),
    Supported("--normalization RMSNorm", "RMSNorm in the adaLN-modulated norms (fused kernel "
              "with float32 statistics) and in the QK norm"),
    Supported("--group-query-attention --num-query-groups G", "grouped-query attention: G "
              "key/value heads (G divides the heads; TP divides G)"),
    Supported("--qk-layernorm", "a norm of the model's kind on each query and key head, "
              "before rotary"),
    Supported("--ffn-hidden-size F", "any MLP width (TP divides F)"),
    Supported("--kv-channels D", "any even head dim (the attention width is heads x D)"),
    Supported("--rotary-base B", "any rotary base"),
    Supported("--norm-epsilon E", "the epsilon of every norm"),
)  # fmt: skip

REFUSED = (
    Refused("--position-embedding-type other than rope",
            lambda a: _get(a, "position_embedding_type", "rope") != "rope",
            "SEDD's bidirectional attention uses rotary positions; the published layout has "
            "no position table"),
    Refused("--rotary-percent other than 1.0, --rotary-interleaved, --use-rope-scaling",
            lambda a: _get(a, "rotary_percent", 1.0) != 1.0 or _get(a, "rotary_interleaved")
            or _get(a, "use_rope_scaling"),
            "rotary covers the whole head dim in rotate-half order, as in the reference and "
            "the plain model"),
    Refused("--normalization other than LayerNorm / RMSNorm, --apply-layernorm-1p",
            lambda a: _get(a, "normalization", "LayerNorm") not in ("LayerNorm", "RMSNorm")
            or _get(a, "layernorm_zero_centered_gamma")
            or _get(a, "apply_layernorm_1p"),
            "the adaLN-modulated norm has a LayerNorm (no bias) and an RMSNorm kernel only"),
    Refused("--squared-relu, --quick-geglu",
            lambda a: _get(a, "squared_relu") or _get(a, "quick_geglu"),
            "the MLP is tanh-GELU (the reference) or SwiGLU"),
    Refused("--glu-linear-offset, --activation-func-clamp-value",
            lambda a: _get(a, "glu_linear_offset", 0.0) not in (0, 0.0, None)
            or _get(a, "activation_func_clamp_value") is not None,
            "SwiGLU is silu(gate) * up, without offset or clamp"),
    Refused("--add-qkv-bias",
            lambda a: _get(a, "add_qkv_bias"),
            "the attention projections have no bias (the reference); the MLP always has one"),
    Refused("--num-experts",
            lambda a: bool(_get(a, "num_experts")),
            "SEDD's MLP is dense (the published layout has no experts)"),
    Refused("--multi-latent-attention, --qk-l2-norm, --attention-output-gate, --window-size, "
            "--softmax-type other than vanilla",
            lambda a: _get(a, "multi_latent_attention") or _get(a, "qk_l2_norm")
            or _get(a, "attention_output_gate") or _get(a, "window_size") is not None
            or _get(a, "softmax_type", "vanilla") != "vanilla",
            "SEDD's attention is full bidirectional softmax attention over all positions"),
    Refused("--apply-residual-connection-post-layernorm",
            lambda a: _get(a, "apply_residual_connection_post_layernorm"),
            "the blocks are pre-norm with gated residuals (adaLN)"),
    Refused("--mtp-num-layers, --hybrid-override-pattern, --heterogeneous-layers-config-path, "
            "--experimental-attention-variant",
            lambda a: _get(a, "mtp_num_layers") or _get(a, "hybrid_override_pattern")
            or _get(a, "heterogeneous_layers_config_path")
            or _get(a, "experimental_attention_variant"),
            "every block is the same DiT block"),
)  # fmt: skip


def architecture_problems(args) -> list[str]:
    """One sentence per refused architecture flag ``args`` asks for, and per value the model
    cannot take (an odd head dim, query groups that do not divide the heads)."""
    problems = [f"{r.flags}: not supported: {r.why}" for r in REFUSED if r.given(args)]
    kv_channels = _get(args, "kv_channels")
    if kv_channels is not None and kv_channels % 2:
        problems.append(f"--kv-channels ({kv_channels}) must be even (rotary)")
    heads, groups = _get(args, "num_attention_heads"), query_groups(args)
    if heads and groups and heads % groups:
        problems.append(
            f"--num-query-groups ({groups}) must divide --num-attention-heads ({heads})"
        )
    epsilon = _get(args, "layernorm_epsilon", 1e-5)
    if not epsilon > 0:
        problems.append(f"--norm-epsilon must be positive, got {epsilon}")
    base = _get(args, "rotary_base", 10000)
    if not base > 0:
        problems.append(f"--rotary-base must be positive, got {base}")
    return problems


def query_groups(args) -> int | None:
    """Key/value heads of the run: --num-query-groups under --group-query-attention, else the
    attention heads."""
    if _get(args, "group_query_attention") and _get(args, "num_query_groups"):
        return args.num_query_groups
    return _get(args, "num_attention_heads")


def backbone_from_args(args) -> dict:
    """The ``plain.SEDDConfig`` backbone fields of a run's (validated) arguments, each None or
    the reference value where the run uses the reference's choice."""
    hidden, heads = args.hidden_size, args.num_attention_heads
    ffn, kv_channels, groups = args.ffn_hidden_size, _get(args, "kv_channels"), query_groups(args)
    epsilon = float(_get(args, "layernorm_epsilon", 1e-5))
    return dict(
        ffn_hidden_size=None if ffn in (None, 4 * hidden) else ffn,
        n_kv_heads=None if groups in (None, heads) else groups,
        kv_channels=None if kv_channels in (None, hidden // heads) else kv_channels,
        rotary_base=float(_get(args, "rotary_base", 10000)),
        norm="rmsnorm" if _get(args, "normalization", "LayerNorm") == "RMSNorm" else "layernorm",
        norm_eps=1e-5 if math.isclose(epsilon, 1e-5, rel_tol=1e-12) else epsilon,
        mlp="swiglu" if _get(args, "swiglu") else "gelu",
        qk_norm=bool(_get(args, "qk_layernorm")),
    )


def backbone_flags(config) -> list[str]:
    """pretrain_sedd.py flags that build ``config``'s backbone (a ``plain.SEDDConfig``);
    ValueError for a rotary base that is not a whole number (Megatron's flag is an int)."""
    flags = ["--ffn-hidden-size", str(config.ffn_width)]
    if config.kv_channels is not None:
        flags += ["--kv-channels", str(config.kv_channels)]
    if config.n_kv_heads is not None:
        flags += ["--group-query-attention", "--num-query-groups", str(config.n_kv_heads)]
    if float(config.rotary_base) != 10000.0:
        if float(config.rotary_base) != int(config.rotary_base):
            raise ValueError(
                f"model.rotary_base {config.rotary_base} is not a whole number "
                "(Megatron's --rotary-base takes an integer)"
            )
        flags += ["--rotary-base", str(int(config.rotary_base))]
    if config.norm == "rmsnorm":
        flags += ["--normalization", "RMSNorm"]
    if config.norm_eps != 1e-5:
        flags += ["--norm-epsilon", repr(float(config.norm_eps))]
    if config.mlp == "swiglu":
        flags.append("--swiglu")
    if config.qk_norm:
        flags.append("--qk-layernorm")
    return flags
