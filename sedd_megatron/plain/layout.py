"""State-dict layout of the reference SEDD module: key names, order and shapes
(docs/architecture.md §5).

Everything that maps names to tensors (the plain model, checkpoint IO, Megatron adapters) should
use these constants instead of spelling out key strings.
"""

import torch

from sedd_megatron.errors import CheckpointError

from .config import SEDDConfig

EMBEDDING = "vocab_embed.embedding"
SIGMA_MAP_KEYS = (
    "sigma_map.mlp.0.weight",
    "sigma_map.mlp.0.bias",
    "sigma_map.mlp.2.weight",
    "sigma_map.mlp.2.bias",
)
# time_conditioning "none": the learned constant conditioning vector c (cond_dim,) takes the
# place of the sigma_map keys.
COND_KEY = "cond_map.cond"
ROTARY_INV_FREQ = "rotary_emb.inv_freq"  # derived buffer, persistent in the reference
BLOCK_KEY_TEMPLATES = (
    "blocks.{i}.norm1.weight",
    "blocks.{i}.attn_qkv.weight",  # rows [q heads | k heads | v heads], head_dim each
    "blocks.{i}.attn_q_norm.weight",  # qk_norm only: (head_dim,), shared by the heads
    "blocks.{i}.attn_k_norm.weight",  # qk_norm only
    "blocks.{i}.attn_out.weight",
    "blocks.{i}.norm2.weight",
    "blocks.{i}.mlp.0.weight",  # SwiGLU: rows [gate | up], F each
    "blocks.{i}.mlp.0.bias",
    "blocks.{i}.mlp.2.weight",
    "blocks.{i}.mlp.2.bias",
    "blocks.{i}.adaLN_modulation.weight",  # rows: shift|scale|gate (attn), shift|scale|gate (mlp)
    "blocks.{i}.adaLN_modulation.bias",
)
FINAL_KEYS = (
    "output_layer.norm_final.weight",
    "output_layer.linear.weight",
    "output_layer.linear.bias",
    "output_layer.adaLN_modulation.weight",  # rows: shift | scale
    "output_layer.adaLN_modulation.bias",
)
QK_NORM_SUFFIXES = ("attn_q_norm.weight", "attn_k_norm.weight")
DERIVED_KEYS = (ROTARY_INV_FREQ,)

TIMESTEP_FREQ_DIM = 256  # sinusoidal features fed to sigma_map
ROTARY_BASE = 10000.0


def block_keys(i: int, qk_norm: bool = False) -> list[str]:
    """The keys of block ``i``, in order (the QK-norm weights only with ``qk_norm``)."""
    return [
        template.format(i=i)
        for template in BLOCK_KEY_TEMPLATES
        if qk_norm or not template.endswith(QK_NORM_SUFFIXES)
    ]


def reference_keys(config: SEDDConfig) -> list[str]:
    """The reference state-dict keys, in the reference order."""
    return reference_keys_for(config.n_blocks, config.time_conditioning, config.qk_norm)


def conditioning_keys(time_conditioning: str = "sigma") -> tuple[str, ...]:
    """The keys of the conditioning vector's parameters: sigma_map's, or the constant ``cond``."""
    return SIGMA_MAP_KEYS if time_conditioning == "sigma" else (COND_KEY,)


def reference_keys_for(
    n_blocks: int, time_conditioning: str = "sigma", qk_norm: bool = False
) -> list[str]:
    """The reference state-dict keys of a model with ``n_blocks`` blocks, in order."""
    keys = [EMBEDDING, *conditioning_keys(time_conditioning), ROTARY_INV_FREQ]
    for i in range(n_blocks):
        keys += block_keys(i, qk_norm)
    return keys + list(FINAL_KEYS)


def expected_shapes(config: SEDDConfig) -> dict[str, tuple[int, ...]]:
    """Ordered mapping key -> shape of the reference state dict for ``config``."""
    H, C, V = config.hidden_size, config.cond_dim, config.vocab_rows
    d, F = config.head_dim, config.ffn_width
    fc1_rows = 2 * F if config.mlp == "swiglu" else F
    block = {
        "norm1.weight": (H,),
        "attn_qkv.weight": ((config.n_heads + 2 * config.kv_heads) * d, H),
        "attn_q_norm.weight": (d,),
        "attn_k_norm.weight": (d,),
        "attn_out.weight": (H, config.n_heads * d),
        "norm2.weight": (H,),
        "mlp.0.weight": (fc1_rows, H),
        "mlp.0.bias": (fc1_rows,),
        "mlp.2.weight": (H, F),
        "mlp.2.bias": (H,),
        "adaLN_modulation.weight": (6 * H, C),
        "adaLN_modulation.bias": (6 * H,),
    }
    if not config.qk_norm:
        block = {k: v for k, v in block.items() if k not in QK_NORM_SUFFIXES}
    shapes = {EMBEDDING: (V, H)}
    if config.time_conditioning == "sigma":
        shapes.update(
            {
                "sigma_map.mlp.0.weight": (C, TIMESTEP_FREQ_DIM),
                "sigma_map.mlp.0.bias": (C,),
                "sigma_map.mlp.2.weight": (C, C),
                "sigma_map.mlp.2.bias": (C,),
            }
        )
    else:
        shapes[COND_KEY] = (C,)
    shapes[ROTARY_INV_FREQ] = (config.head_dim // 2,)
    for i in range(config.n_blocks):
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    shapes.update(
        {
            "output_layer.norm_final.weight": (H,),
            "output_layer.linear.weight": (V, H),
            "output_layer.linear.bias": (V,),
            "output_layer.adaLN_modulation.weight": (2 * H, C),
            "output_layer.adaLN_modulation.bias": (2 * H,),
        }
    )
    assert list(shapes) == reference_keys(config)
    return shapes


def rotary_inv_freq(head_dim: int, base: float = ROTARY_BASE) -> torch.Tensor:
    """inv_freq_j = base^(-2j/head_dim), j < head_dim/2, float32 (the reference buffer)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))


def check_state_dict(state_dict: dict, config: SEDDConfig, allow_missing_derived: bool = True):
    """Raise CheckpointError unless ``state_dict`` has exactly the reference keys and shapes.

    The derived ``rotary_emb.inv_freq`` may be absent (if allowed) but must be right if present.
    """
    shapes = expected_shapes(config)
    optional = set(DERIVED_KEYS) if allow_missing_derived else set()
    missing = [k for k in shapes if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in shapes]
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    for key, shape in shapes.items():
        if key not in state_dict:
            continue
        tensor = state_dict[key]
        if not isinstance(tensor, torch.Tensor):
            problems.append(f"{key} is a {type(tensor).__name__}, not a tensor")
        elif tuple(tensor.shape) != shape:
            problems.append(f"{key} has shape {tuple(tensor.shape)}, expected {shape}")
        elif not tensor.is_floating_point():
            problems.append(f"{key} has dtype {tensor.dtype}, expected a floating dtype")
    embedding = state_dict.get(EMBEDDING)
    if isinstance(embedding, torch.Tensor) and embedding.ndim == 2:
        if embedding.shape[0] != config.vocab_rows:
            problems.insert(
                0,
                f"the weights have {embedding.shape[0]} vocab rows but the config "
                f"(tokens={config.tokens}, graph={config.graph!r}) needs {config.vocab_rows}",
            )
    if problems:
        raise CheckpointError("state dict does not match the SEDD layout: " + "; ".join(problems))
    inv_freq = state_dict.get(ROTARY_INV_FREQ)
    if inv_freq is not None:
        expected = rotary_inv_freq(config.head_dim, config.rotary_base)
        if not torch.allclose(inv_freq.detach().float().cpu(), expected, rtol=1e-6, atol=0.0):
            raise CheckpointError(
                f"{ROTARY_INV_FREQ} does not equal base^(-2j/head_dim) for head_dim "
                f"{config.head_dim} and base {config.rotary_base:g} (wrong n_heads/hidden_size "
                "or rotary_base in the config?)"
            )


def _short(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > limit else ''}]"
