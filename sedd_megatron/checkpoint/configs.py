"""Translating between pretrain_sedd.py's Megatron arguments and the published config.json.

The published file (docs/architecture.md §5) is the reference run's whole hydra config; SEDD
reads ``tokens``, ``graph``, ``noise`` and ``model``. Exports also fill ``ngpus``, ``training``
and ``optim`` from the saved arguments under the reference's key names; imports take the
optimizer settings and the EMA decay back from there.
"""

import dataclasses

from sedd_megatron.checkpoint.layouts import check_config_layout
from sedd_megatron.errors import CheckpointError, ConfigError
from sedd_megatron.plain.config import SEDDConfig
from sedd_megatron.training.architecture import backbone_flags, backbone_from_args

# published name -> (hidden_size, n_blocks, n_heads) of the reference configs
_NAMED_SIZES = {"small": (768, 12, 12), "medium": (1024, 24, 16)}

# (config.json section, key, Megatron flag) of the optimizer/training settings carried over
_OPTIM_FLAGS = (
    ("optim", "lr", "lr"),
    ("optim", "warmup", "lr-warmup-iters"),
    ("optim", "beta1", "adam-beta1"),
    ("optim", "beta2", "adam-beta2"),
    ("optim", "eps", "adam-eps"),
    ("optim", "weight_decay", "weight-decay"),
    ("optim", "grad_clip", "clip-grad"),
    ("training", "ema", "ema-decay"),
)


def num_tokens_from_args(args) -> int:
    """The data vocabulary size pretrain_sedd.py trained with (its tokenizer's ``vocab_size``)."""
    if args.tokenizer_type == "NullTokenizer":
        return int(args.vocab_size)
    from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer

    try:
        return int(build_tokenizer(args).vocab_size)
    except Exception as err:
        raise CheckpointError(
            f"cannot tell the vocabulary size: the checkpoint's tokenizer "
            f"({args.tokenizer_type}) cannot be built here: {err}"
        ) from err


# Saved args attribute holding the config.json an imported checkpoint came from.
SOURCE_CONFIG_ARG = "sedd_source_config"


def published_config(args, num_tokens: int) -> SEDDConfig:
    """The published-layout config of a model trained by pretrain_sedd.py with ``args``.

    For a checkpoint written by import_checkpoint, the imported config.json itself (its
    name and hydra sections) when it agrees with the args.
    """
    config = config_from_args(args, num_tokens)
    source = getattr(args, SOURCE_CONFIG_ARG, None)
    try:
        source = SEDDConfig.from_dict(source) if isinstance(source, dict) else None
    except ConfigError:
        source = None
    if source is not None and dataclasses.replace(config, name=source.name) == source:
        return source
    return config


def config_from_args(args, num_tokens: int) -> SEDDConfig:
    """The published-layout config of the model pretrain_sedd.py builds from ``args`` (every
    architecture pretrain accepts has one: ``training.architecture``)."""
    hidden, heads = args.hidden_size, args.num_attention_heads
    name = next((n for n, s in _NAMED_SIZES.items() if s == (hidden, args.num_layers, heads)), None)
    extra = {
        "ngpus": args.world_size,
        "training": {
            "batch_size": args.global_batch_size,
            "accum": args.global_batch_size // (args.micro_batch_size * args.data_parallel_size),
            "n_iters": args.train_iters,
            "snapshot_freq": args.save_interval,
            "log_freq": args.log_interval,
            "eval_freq": args.eval_interval,
            "ema": args.ema_decay,
        },
        "optim": {
            "weight_decay": args.weight_decay,
            "optimizer": "AdamW",
            "lr": args.lr,
            "beta1": args.adam_beta1,
            "beta2": args.adam_beta2,
            "eps": args.adam_eps,
            "warmup": args.lr_warmup_iters,
            "grad_clip": args.clip_grad,
        },
    }
    try:
        config = _config(args, num_tokens, name, extra)
    except ConfigError as err:
        raise CheckpointError(
            f"the checkpoint's saved arguments give no valid model: {err}"
        ) from err
    if not config.reference_backbone:  # "small"/"medium" name the reference architecture
        config = dataclasses.replace(config, name="custom")
    return config


def _config(args, num_tokens, name, extra) -> SEDDConfig:
    hidden, heads = args.hidden_size, args.num_attention_heads
    return SEDDConfig(
        tokens=num_tokens,
        graph=args.sedd_graph,
        hidden_size=hidden,
        cond_dim=args.sedd_cond_dim,
        length=args.seq_length,
        n_blocks=args.num_layers,
        n_heads=heads,
        scale_by_sigma=bool(args.sedd_scale_by_sigma),
        time_conditioning=getattr(args, "sedd_time_conditioning", "sigma"),
        dropout=args.hidden_dropout,
        noise_type=args.sedd_noise,
        sigma_min=args.sedd_sigma_min,
        sigma_max=args.sedd_sigma_max,
        name=name or "custom",
        extra=extra,
        **backbone_from_args(args),
    )


def pretrain_argv(config: SEDDConfig, *, tp: int = 1, pp: int = 1) -> list[str]:
    """pretrain_sedd.py flags that build ``config``'s model (NullTokenizer with its vocabulary).

    Optimizer settings and the EMA decay come from config.json's ``optim``/``training``
    sections where present (the reference defaults otherwise). Blocks that ``pp`` does not
    divide get the default uneven split (``checkpoint.layouts.pipeline_split``) through
    Megatron's ``--decoder-first/last-pipeline-num-layers``; a layout that does not fit the
    model raises ConfigError.
    """
    layout = check_config_layout(config, tp, pp)
    try:
        backbone = backbone_flags(config)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    argv = [
        "--num-layers", str(config.n_blocks),
        "--hidden-size", str(config.hidden_size),
        "--num-attention-heads", str(config.n_heads),
        *backbone,
        "--seq-length", str(config.length),
        "--max-position-embeddings", str(config.length),
        "--sedd-graph", config.graph,
        "--sedd-noise", config.noise_type,
        "--sedd-sigma-min", repr(float(config.sigma_min)),
        "--sedd-sigma-max", repr(float(config.sigma_max)),
        "--sedd-cond-dim", str(config.cond_dim),
        "--sedd-scale-by-sigma" if config.scale_by_sigma else "--no-sedd-scale-by-sigma",
        *(["--sedd-time-conditioning", "none"] if config.time_conditioning == "none" else []),
        "--hidden-dropout", repr(float(config.dropout)),
        "--tokenizer-type", "NullTokenizer",
        "--vocab-size", str(config.tokens),
        "--tensor-model-parallel-size", str(tp),
        "--pipeline-model-parallel-size", str(pp),
        "--micro-batch-size", "1",
        "--ckpt-format", "torch_dist",
        *layout.pretrain_flags(),
    ]  # fmt: skip
    for section, key, flag in _OPTIM_FLAGS:
        value = (config.extra.get(section) or {}).get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            argv += [f"--{flag}", str(int(value)) if flag == "lr-warmup-iters" else repr(value)]
    return argv
