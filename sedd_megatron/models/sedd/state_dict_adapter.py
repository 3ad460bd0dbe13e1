"""One place that maps between SEDDModel's (sharded) parameters and the reference SEDD layout.

The reference layout is the published ``louaaron/sedd-*`` state dict (docs/architecture.md §5),
as produced by ``sedd_megatron.plain``. Differences the adapter owns:

- names: ``blocks.i.attn_qkv`` <-> ``decoder.layers.i.self_attention.linear_qkv`` and so on;
  pipeline stages hold a contiguous range of global layers;
- qkv rows: reference ``[q heads | k heads | v heads]`` <-> Megatron's per-query-group
  interleave ``[group][q heads of the group | k | v]`` (multi-head attention: one head per
  group), so a TP shard holds whole groups;
- SwiGLU fc1 rows: reference ``[gate | up]`` <-> each TP rank's ``[gate shard | up shard]``;
- vocabulary padding: Megatron pads embedding and output rows to a multiple that depends on TP;
  padded rows are zero on import and dropped on export;
- tensor parallel: column-parallel weights split on dim 0, row-parallel on dim 1, the rest is
  replicated;
- ``rotary_emb.inv_freq`` is a derived buffer in the reference and not a Megatron parameter.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from sedd_megatron.errors import CheckpointError
from sedd_megatron.models.sedd.sedd_config import gelu_tanh
from sedd_megatron.plain import layout

# reference block key suffix -> (Megatron layer key suffix, how it is sharded over TP)
_BLOCK = {
    "norm1.weight": ("input_layernorm.weight", None),
    "attn_qkv.weight": ("self_attention.linear_qkv.weight", "qkv"),
    "attn_q_norm.weight": ("self_attention.q_layernorm.weight", None),
    "attn_k_norm.weight": ("self_attention.k_layernorm.weight", None),
    "attn_out.weight": ("self_attention.linear_proj.weight", "row"),
    "norm2.weight": ("pre_mlp_layernorm.weight", None),
    "mlp.0.weight": ("mlp.linear_fc1.weight", "column"),
    "mlp.0.bias": ("mlp.linear_fc1.bias", "column"),
    "mlp.2.weight": ("mlp.linear_fc2.weight", "row"),
    "mlp.2.bias": ("mlp.linear_fc2.bias", None),
    "adaLN_modulation.weight": ("adaLN_modulation.weight", None),
    "adaLN_modulation.bias": ("adaLN_modulation.bias", None),
}
_GLOBAL = {
    layout.EMBEDDING: ("embedding.word_embeddings.weight", "vocab"),
    **{key: (key, None) for key in layout.SIGMA_MAP_KEYS},
    layout.COND_KEY: (layout.COND_KEY, None),  # time_conditioning "none"
    "output_layer.norm_final.weight": ("output_layer.norm_final.weight", None),
    "output_layer.linear.weight": ("output_layer.linear.weight", "vocab"),
    "output_layer.linear.bias": ("output_layer.linear.bias", "vocab"),
    "output_layer.adaLN_modulation.weight": ("output_layer.adaLN_modulation.weight", None),
    "output_layer.adaLN_modulation.bias": ("output_layer.adaLN_modulation.bias", None),
}
_SPLIT_DIM = {"qkv": 0, "column": 0, "vocab": 0, "row": 1, "glu": 0}
_GATED = {"mlp.0.weight", "mlp.0.bias"}  # fc1: "glu" sharding under SwiGLU


@dataclass(frozen=True)
class Entry:
    reference_key: str
    megatron_key: str  # as in this rank's model.state_dict() (local layer numbering)
    kind: str | None  # TP sharding: "qkv" | "column" | "glu" | "row" | "vocab" | None (replicated)


def model_entries(model) -> list[Entry]:
    """The reference <-> local Megatron key pairs for the parameters this rank holds."""
    by_megatron = {}
    for ref_key, (mg_key, kind) in _GLOBAL.items():
        by_megatron[mg_key] = Entry(ref_key, mg_key, kind)
    gated = model.config.gated_linear_unit
    for local_index, layer in enumerate(model.decoder.layers):
        global_index = layer.layer_number - 1
        for ref_suffix, (mg_suffix, kind) in _BLOCK.items():
            kind = "glu" if gated and ref_suffix in _GATED else kind
            mg_key = f"decoder.layers.{local_index}.{mg_suffix}"
            by_megatron[mg_key] = Entry(f"blocks.{global_index}.{ref_suffix}", mg_key, kind)
    entries = []
    for name, _ in _parameters(model):
        if name not in by_megatron:
            raise CheckpointError(f"no reference key is known for Megatron parameter {name!r}")
        entries.append(by_megatron[name])
    return entries


def _parameters(model):
    return [(n, t) for n, t in model.state_dict().items() if not n.endswith("_extra_state")]


def _qkv_to_megatron(weight: torch.Tensor, config) -> torch.Tensor:
    """Rows [q: heads][k: groups][v: groups] (head_dim each) -> [groups][q per group, k, v]."""
    heads, groups, d = config.num_attention_heads, config.num_query_groups, config.kv_channels
    q, k, v = weight.split([heads * d, groups * d, groups * d])
    per_group = [t.reshape(groups, -1, weight.shape[1]) for t in (q, k, v)]
    return torch.cat(per_group, dim=1).reshape(weight.shape)


def _qkv_to_reference(weight: torch.Tensor, config) -> torch.Tensor:
    heads, groups, d = config.num_attention_heads, config.num_query_groups, config.kv_channels
    grouped = weight.reshape(groups, (heads // groups + 2) * d, weight.shape[1])
    q, k, v = grouped.split([heads // groups * d, d, d], dim=1)
    return torch.cat([t.reshape(-1, weight.shape[1]) for t in (q, k, v)]).reshape(weight.shape)


def _glu_shard(full: torch.Tensor, tp_size: int, tp_rank: int) -> torch.Tensor:
    """TP rank's fc1 rows under SwiGLU: [gate shard | up shard] of the full [gate | up]."""
    return torch.cat([half.chunk(tp_size)[tp_rank] for half in full.chunk(2)])


def _glu_gather(parts: list[torch.Tensor]) -> torch.Tensor:
    """The full [gate | up] from the TP ranks' [gate shard | up shard]."""
    halves = [part.chunk(2) for part in parts]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves])


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    pad = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, pad], dim=0)


def _tp(model):
    return model.tp_group.size(), model.tp_group.rank()


def load_reference_state_dict(model, reference: dict[str, torch.Tensor]) -> None:
    """Copy a reference-layout state dict into this rank's shard of ``model`` (strict).

    Every parameter of this rank must be covered, shapes must match after padding and slicing.
    Call on every rank with the same full ``reference`` dict.
    """
    config = model.config
    tp_size, tp_rank = _tp(model)
    local = dict(_parameters(model))
    for entry in model_entries(model):
        if entry.reference_key not in reference:
            raise CheckpointError(f"reference state dict lacks {entry.reference_key!r}")
        full = reference[entry.reference_key]
        if entry.kind == "qkv":
            full = _qkv_to_megatron(full, config)
        elif entry.kind == "vocab":
            full = _pad_rows(full, model.vocab_size)
        if entry.kind == "glu":
            full = _glu_shard(full, tp_size, tp_rank)
        elif entry.kind is not None:
            full = full.chunk(tp_size, dim=_SPLIT_DIM[entry.kind])[tp_rank]
        target = local[entry.megatron_key]
        if tuple(full.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{entry.reference_key} -> {entry.megatron_key}: shape {tuple(full.shape)} "
                f"does not match the model's {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(full)


def gather_reference(model, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Assemble full reference-layout tensors from per-rank Megatron tensors.

    ``tensors`` maps this rank's Megatron parameter names to tensors shaped like those parameters
    (the parameters themselves, or their gradients). Collective over the model's TP and PP
    groups; every rank returns the same dict (CPU tensors, reference key order, no inv_freq).
    """
    config = model.config
    tp_size, _ = _tp(model)
    stage: dict[str, torch.Tensor] = {}
    for entry in model_entries(model):
        tensor = tensors[entry.megatron_key].detach()
        if entry.kind is not None and tp_size > 1:
            parts = [torch.empty_like(tensor) for _ in range(tp_size)]
            dist.all_gather(parts, tensor.contiguous(), group=model.tp_group)
            if entry.kind == "glu":
                tensor = _glu_gather(parts)
            else:
                tensor = torch.cat(parts, dim=_SPLIT_DIM[entry.kind])
        if entry.kind == "qkv":
            tensor = _qkv_to_reference(tensor, config)
        elif entry.kind == "vocab":
            tensor = tensor[: config.vocab_rows]
        stage[entry.reference_key] = tensor.cpu().clone()

    merged: dict[str, torch.Tensor] = {}
    if model.pp_group.size() > 1:
        parts = [None] * model.pp_group.size()
        dist.all_gather_object(parts, stage, group=model.pp_group)
        for part in parts:
            for key, tensor in part.items():
                merged.setdefault(key, tensor)  # replicated keys: every stage holds a copy
    else:
        merged = stage
    keys = layout.reference_keys_for(
        config.num_layers, config.time_conditioning, config.qk_layernorm
    )
    order = [k for k in keys if k != layout.ROTARY_INV_FREQ]
    missing = [k for k in order if k not in merged]
    if missing:
        raise CheckpointError(f"gathered state dict lacks {missing[:6]}")
    return {k: merged[k] for k in order}


def reference_state_dict(model, include_inv_freq: bool = True) -> dict[str, torch.Tensor]:
    """The full reference-layout state dict of ``model`` (collective over TP and PP)."""
    gathered = gather_reference(model, dict(_parameters(model)))
    if not include_inv_freq:
        return gathered
    config = model.config
    last_conditioning_key = layout.conditioning_keys(model.config.time_conditioning)[-1]
    out = {}
    for key, tensor in gathered.items():
        out[key] = tensor
        if key == last_conditioning_key:
            out[layout.ROTARY_INV_FREQ] = layout.rotary_inv_freq(
                config.kv_channels, config.rotary_base
            )
    return out


def reference_grads(model) -> dict[str, torch.Tensor]:
    """Gradients of ``model`` in the reference layout (``main_grad`` under Megatron DDP)."""
    grads = {}
    for name, param in model.named_parameters():
        grad = getattr(param, "main_grad", None)
        grads[name] = grad if grad is not None else param.grad
    return gather_reference(model, grads)


def transformer_config_kwargs(published) -> dict:
    """SEDDTransformerConfig keyword arguments for a published-layout config (plain.SEDDConfig)."""
    swiglu = published.mlp == "swiglu"
    return dict(
        num_layers=published.n_blocks,
        hidden_size=published.hidden_size,
        num_attention_heads=published.n_heads,
        ffn_hidden_size=published.ffn_width,
        kv_channels=published.head_dim,
        num_query_groups=published.kv_heads,
        rotary_base=published.rotary_base,
        normalization="RMSNorm" if published.norm == "rmsnorm" else "LayerNorm",
        layernorm_epsilon=published.norm_eps,
        qk_layernorm=published.qk_norm,
        gated_linear_unit=swiglu,
        activation_func=F.silu if swiglu else gelu_tanh,
        bias_activation_fusion=swiglu,  # Megatron's fused bias-SwiGLU (pretrain's default)
        graph=published.graph,
        num_tokens=published.tokens,
        cond_dim=published.cond_dim,
        scale_by_sigma=published.scale_by_sigma,
        time_conditioning=published.time_conditioning,
        hidden_dropout=published.dropout,
    )
