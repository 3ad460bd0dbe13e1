"""Building a SEDDModel at the current TP/PP and filling it from a checkpoint (see __init__)."""

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sedd_megatron import checksums
from sedd_megatron.checkpoint import configs, locate
from sedd_megatron.checkpoint.layouts import check_config_layout
from sedd_megatron.errors import CheckpointError, ConfigError
from sedd_megatron.plain.checkpoint import first_non_finite
from sedd_megatron.plain.config import SEDDConfig
from sedd_megatron.runtime import CPU_PIPELINE_CONFIG, is_cpu_megatron_enabled


@dataclass(frozen=True)
class SEDDModelInfo:
    """What :func:`load_sedd_model` loaded."""

    config: SEDDConfig  # published-layout config (graph, noise, sizes, vocabulary)
    source: Path
    source_kind: str  # "megatron" (pretrain_sedd.py checkpoint) or "plain" (published layout)
    iteration: int | None  # Megatron iteration (0 for a release checkpoint); None for plain
    ema: bool | None  # EMA weights loaded; None for plain sources (not recorded there)
    seq_length: int

    @property
    def graph(self) -> str:
        return self.config.graph

    @property
    def num_tokens(self) -> int:
        return self.config.tokens

    @property
    def noise_type(self) -> str:
        return self.config.noise_type

    @property
    def sigma_min(self) -> float:
        return self.config.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.config.sigma_max


def build_model(config: SEDDConfig, *, seq_length: int | None = None, divisible_by: int = 128):
    """This rank's pipeline stage of a float32 SEDDModel for ``config`` at the current TP/PP.

    Local (non Transformer Engine) layers, parameters on the current device, weights random.
    Blocks that PP does not divide are split by ``checkpoint.layouts.pipeline_split`` (Megatron's
    uneven pipeline; checkpoints are keyed by global layer, so any split loads any checkpoint).
    """
    from megatron.core import parallel_state as ps

    from sedd_megatron.models.sedd import (  # lazy: imports megatron
        SEDDModel,
        SEDDTransformerConfig,
        get_sedd_layer_spec,
        padded_vocab_size,
    )
    from sedd_megatron.models.sedd.state_dict_adapter import (  # lazy: imports megatron
        transformer_config_kwargs,
    )

    if not ps.model_parallel_is_initialized():
        raise RuntimeError(
            "no Megatron world: run inside `with sedd_megatron.runtime.world(tp=..., pp=...):`"
        )
    tp = ps.get_tensor_model_parallel_world_size()
    pp = ps.get_pipeline_model_parallel_world_size()
    if ps.get_virtual_pipeline_model_parallel_world_size() not in (None, 1):
        raise CheckpointError("loading with virtual pipeline stages is not supported")
    try:
        layout = check_config_layout(config, tp, pp, vocab_divisor=divisible_by)
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    on_cpu = is_cpu_megatron_enabled()
    transformer_config = SEDDTransformerConfig(
        **transformer_config_kwargs(config),
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        **layout.transformer_config_kwargs(),
        use_cpu_initialization=True,
        params_dtype=torch.float32,
        pipeline_dtype=torch.float32,
        **(CPU_PIPELINE_CONFIG if on_cpu else {}),
    )
    model = SEDDModel(
        transformer_config,
        get_sedd_layer_spec(
            use_transformer_engine=False, qk_layernorm=transformer_config.qk_layernorm
        ),
        vocab_size=padded_vocab_size(transformer_config.vocab_rows, tp, divisible_by),
        max_sequence_length=seq_length or config.length,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )
    if torch.cuda.is_available() and not on_cpu:
        model.cuda(torch.cuda.current_device())
    return model


def load_sedd_model(
    source: str | Path,
    *,
    iteration: int | None = None,
    use_ema: bool | None = None,
    seq_length: int | None = None,
    verify_checksums: bool = True,
):
    """Load a SEDD checkpoint into this rank's stage of a SEDDModel; returns (model, info).

    See the package docstring for the contract. ``use_ema``: None = EMA weights if the
    checkpoint has them, True = require them, False = the raw weights. ``verify_checksums``:
    check the files against their checksum manifest first (``sedd_megatron.checksums``).
    """
    from sedd_megatron.models.sedd.state_dict_adapter import (  # lazy: imports megatron
        load_reference_state_dict,
    )

    source = Path(source)
    kind = locate.source_kind(source)
    if kind == "plain":
        if iteration is not None:
            raise CheckpointError(f"{source} is a plain checkpoint: it has no iterations")
        config, reference = locate.read_plain_checkpoint(source, verify_checksums=verify_checksums)
        model = build_model(config, seq_length=seq_length)
        load_reference_state_dict(model, reference)
        info = SEDDModelInfo(config, source, kind, None, None, seq_length or config.length)
        return model.eval(), info

    where = locate.find_iteration(source, iteration)
    if verify_checksums:
        checksums.verify_directory(where.path)
    args = locate.read_common_state(where)["args"]
    config = configs.published_config(args, configs.num_tokens_from_args(args))
    has_ema = locate.has_ema_weights(where)
    if use_ema and not has_ema:
        raise CheckpointError(
            f"{where.path} has no EMA weights (trained with --ema-decay 0?); load the raw "
            "weights instead (use_ema=False / --raw)"
        )
    use_ema = has_ema if use_ema is None else bool(use_ema)
    model = build_model(
        config, seq_length=seq_length, divisible_by=args.make_vocab_size_divisible_by
    )
    load_megatron_weights(model, where, use_ema)
    check_finite_weights(model, f"{where.path} ({'EMA' if use_ema else 'raw'} weights)")
    info = SEDDModelInfo(
        config, source, kind, where.iteration, use_ema, seq_length or config.length
    )
    return model.eval(), info


def load_megatron_weights(model, where: "locate.CheckpointIteration", use_ema: bool) -> None:
    """Fill ``model``'s parameters from a torch_dist iteration (resharding as needed).

    With ``use_ema`` each parameter is read from its EMA shadow ``ema.<key>``, which the
    training run saved with the parameter's own sharding. Optimizer state is not read.
    """
    from megatron.core import dist_checkpointing

    sharded = model.sharded_state_dict()
    if use_ema:
        sharded = {name: _ema_view(name, value) for name, value in sharded.items()}
    locate.check_iteration(where)  # unsafe metadata, missing or short shards: clear errors
    try:
        with locate.safe_megatron_reads(where.path):
            loaded = dist_checkpointing.load({"model": sharded}, str(where.path))["model"]
        model.load_state_dict(loaded, strict=True)
    except CheckpointError:
        raise
    except Exception as err:  # key/shape mismatches surface as several exception types
        raise CheckpointError(f"cannot load the model weights from {where.path}: {err}") from err


def check_finite_weights(model, source: str) -> None:
    """CheckpointError naming the first parameter holding NaN or Inf, on any rank (every rank
    raises, so none is left waiting in a collective)."""
    bad = first_non_finite((name, p.detach()) for name, p in model.named_parameters())
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        found = [None] * dist.get_world_size()
        dist.all_gather_object(found, bad)
        bad = next((name for name in found if name is not None), None)
    if bad is not None:
        raise CheckpointError(
            f"{source}: the weight {bad} holds NaN or Inf values; refusing to use these weights"
        )


def _ema_view(name: str, value):
    if name.endswith("_extra_state") or not hasattr(value, "key"):
        return value
    return replace(value, key=f"ema.{value.key}")
