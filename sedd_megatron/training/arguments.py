"""Command-line arguments of pretrain_sedd.py: Megatron's flags, a SEDD group, YAML configs.

Where the user sets nothing, defaults follow the reference SEDD training (docs/math.md §4.3):
AdamW (0.9, 0.999), eps 1e-8, weight decay 0, lr 3e-4 with 2500 warm-up steps then constant,
gradient clipping 1.0, hidden dropout 0.1, no attention dropout, EMA 0.9999. Every default can be
overridden by a YAML config (``--config FILE``) or on the command line; the command line wins.
"""

import argparse
import sys
from pathlib import Path

import yaml

from sedd_megatron.console import one_line_errors
from sedd_megatron.errors import ConfigError
from sedd_megatron.training.architecture import architecture_problems

GPT2_VOCAB_SIZE = 50257  # the reference's vocabulary (GPT-2 BPE; EOS = 50256, the last id)

# Megatron argument dest -> reference default. Applied as parser defaults, so any explicit flag
# (command line or YAML) overrides them.
REFERENCE_DEFAULTS = dict(
    optimizer="adam",
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_eps=1e-8,
    weight_decay=0.0,
    lr=3e-4,
    lr_decay_style="constant",
    lr_warmup_iters=2500,
    clip_grad=1.0,
    hidden_dropout=0.1,
    attention_dropout=0.0,
    position_embedding_type="rope",
    rotary_base=10000,
    normalization="LayerNorm",
    layernorm_epsilon=1e-5,
    add_bias_linear=False,
    untie_embeddings_and_output_weights=True,
    tokenizer_type="NullTokenizer",  # pre-tokenized data; vocabulary: see default_tokenizer
)


def transformer_engine_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformer_engine") is not None


def accelerator_defaults() -> dict:
    """Defaults that depend on the machine: Apex's fused wgrad kernel, NCCL or gloo.

    The layers default to the local Megatron-Core spec even where Transformer Engine is
    installed: the TE spec has not yet been checked on a GPU against the local one (layouts and
    losses), so it is opt-in (``--transformer-impl transformer_engine``, which FP8 needs) and
    :func:`transformer_engine_notice` says so at start-up. TE's fused rotary embedding follows
    the TE spec (:func:`parse_args`)."""
    import importlib.util

    have_wgrad = importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None
    import torch

    return dict(
        distributed_backend="nccl" if torch.cuda.is_available() else "gloo",
        transformer_impl="local",
        gradient_accumulation_fusion=have_wgrad,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        bias_gelu_fusion=False,
        bias_dropout_fusion=False,
    )


def transformer_engine_notice(args) -> str | None:
    """The start-up line for a run that could use Transformer Engine but does not."""
    if args.transformer_impl == "transformer_engine" or not transformer_engine_installed():
        return None
    return (
        "Transformer Engine is installed but not used: --transformer-impl transformer_engine "
        "turns its layers on (FP8 needs them); that path is not yet verified on a GPU against "
        "the local spec"
    )


def add_sedd_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Megatron ``extra_args_provider``: the SEDD argument group plus reference defaults."""
    from sedd_megatron.diffusion import GRAPHS  # lazy: torch; check_argv runs before it loads
    from sedd_megatron.runtime.upstream_fixes import escape_help_percents  # lazy: torch, as above

    group = parser.add_argument_group(title="SEDD (score entropy discrete diffusion)")
    group.add_argument(
        "--sedd-graph",
        choices=tuple(GRAPHS),
        default="absorb",
        help="forward process: absorbing (MASK token) or uniform",
    )
    group.add_argument(
        "--sedd-noise",
        choices=("loglinear", "geometric"),
        default=None,
        help="noise schedule (default: loglinear for absorb, geometric for uniform)",
    )
    group.add_argument(
        "--sedd-sigma-min", type=float, default=1e-4, help="geometric schedule: total noise at t=0"
    )
    group.add_argument(
        "--sedd-sigma-max", type=float, default=20.0, help="geometric schedule: total noise at t=1"
    )
    group.add_argument(
        "--sedd-sampling-eps", type=float, default=1e-3, help="training draws t ~ U(eps, 1)"
    )
    group.add_argument(
        "--sedd-cond-dim",
        type=int,
        default=128,
        help="width of the noise-level conditioning vector",
    )
    group.add_argument(
        "--sedd-scale-by-sigma",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="absorb output shift by -log(e^sigma - 1) (default: on for absorb)",
    )
    group.add_argument(
        "--sedd-time-conditioning",
        choices=("sigma", "none"),
        default="sigma",
        help="sigma: the network is conditioned on the noise level (the reference); none: "
        "time-independent absorbing SEDD, log-score = log p(y | x_t) - log(e^sigma - 1) with a "
        "learned constant conditioning vector (absorb only; lets the sampler reuse scores)",
    )
    group.add_argument(
        "--sedd-fused-kernels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fused kernels for the layers' element-wise work and the loss where usable (CUDA "
        "with Triton); --no-sedd-fused-kernels runs the unfused torch code (debugging)",
    )
    group.add_argument(
        "--ema-decay", type=float, default=0.9999, help="EMA decay of the weights (0 disables EMA)"
    )
    group.add_argument(
        "--no-eval-with-ema",
        dest="eval_with_ema",
        action="store_false",
        help="evaluate with the raw weights instead of the EMA weights",
    )
    group.add_argument(
        "--sedd-metrics-file",
        type=str,
        default=None,
        help="append per-step JSON lines (iteration, loss, grad norm, lr) here; a run that "
        "starts at iteration N (resumed, or 0) first drops the records after N",
    )
    group.add_argument(
        "--no-verify-checksums",
        dest="verify_checksums",
        action="store_false",
        help="--load / --pretrained-checkpoint: skip checking the checkpoint's files against "
        "their checksum manifest (sedd_checksums.json, written with every save)",
    )
    parser.set_defaults(**REFERENCE_DEFAULTS, **accelerator_defaults())
    escape_help_percents(parser)  # Megatron's inherited help, for --help
    one_line_errors(parser)
    return parser


def default_tokenizer(args) -> None:
    """The default tokenizer works offline: ``NullTokenizer`` (the data is pre-tokenized; only
    the vocabulary size matters) with the GPT-2 vocabulary when no ``--vocab-size`` is given.
    Megatron's ``GPT2BPETokenizer`` fetches 'gpt2' from the Hugging Face hub even with local
    files, so it is used only when asked for (and then needs both files or the hub)."""
    if args.tokenizer_type == "NullTokenizer" and args.vocab_size is None:
        args.vocab_size = GPT2_VOCAB_SIZE
    if args.tokenizer_type == "GPT2BPETokenizer" and bool(args.vocab_file) != bool(args.merge_file):
        raise ConfigError(
            "--tokenizer-type GPT2BPETokenizer needs both --vocab-file and --merge-file"
        )
    if args.vocab_size is not None and args.vocab_size < 2:
        raise ConfigError(f"--vocab-size must be at least 2, got {args.vocab_size}")


_POSITIVE = (
    "num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "kv_channels",
    "seq_length", "max_position_embeddings", "micro_batch_size", "global_batch_size",
    "train_iters", "train_samples", "lr_decay_iters", "save_interval", "eval_interval",
    "log_interval", "vocab_size",
)  # fmt: skip
_NON_NEGATIVE = (
    "lr", "min_lr", "lr_warmup_iters", "lr_warmup_samples", "lr_warmup_init", "weight_decay",
    "clip_grad", "eval_iters",
)  # fmt: skip


#: Megatron flags whose dest is not the flag's name.
_FLAG_OF_DEST = {"layernorm_epsilon": "--norm-epsilon"}


def flag_name(name: str) -> str:
    """The command-line flag of an argument dest: ``train_iters`` -> ``--train-iters``."""
    return _FLAG_OF_DEST.get(name) or "--" + name.replace("_", "-")


def training_setting_problems(args) -> list[str]:
    """Training settings Megatron would accept and fail on later, or assert on without a
    message: one sentence per problem. Flags ``args`` lacks (or leaves None) are not checked;
    divisibility is checked only on sizes that passed."""
    problems = []

    def value(name):
        return getattr(args, name, None)

    bad = set()
    for name in _POSITIVE:
        v = value(name)
        if v is not None and not v > 0:
            problems.append(f"{flag_name(name)} must be positive, got {v}")
            bad.add(name)
    for name in _NON_NEGATIVE:
        v = value(name)
        if v is not None and not v >= 0:  # NaN fails too
            problems.append(f"{flag_name(name)} must not be negative, got {v}")
            bad.add(name)
    lr, min_lr = value("lr"), value("min_lr")
    if lr is not None and min_lr is not None and not bad & {"lr", "min_lr"} and min_lr > lr:
        problems.append(f"--min-lr ({min_lr}) must not exceed --lr ({lr})")
    fraction = value("lr_warmup_fraction")
    if fraction is not None and not 0 <= fraction <= 1:
        problems.append(f"--lr-warmup-fraction must be in [0, 1], got {fraction}")
    for name in ("hidden_dropout", "attention_dropout"):
        v = value(name)
        if v is not None and not 0 <= v < 1:
            problems.append(f"{flag_name(name)} must be in [0, 1), got {v}")
    hidden, heads = value("hidden_size"), value("num_attention_heads")
    tp = value("tensor_model_parallel_size")
    usable = lambda *names: all(value(n) is not None and n not in bad for n in names)
    if usable("hidden_size", "num_attention_heads") and hidden % heads:
        problems.append(
            f"--hidden-size ({hidden}) must be divisible by --num-attention-heads ({heads})"
        )
    if tp is not None and tp > 0:
        for name in ("num_attention_heads", "ffn_hidden_size"):
            if usable(name) and value(name) % tp:
                problems.append(
                    f"{flag_name(name)} ({value(name)}) must be divisible by "
                    f"--tensor-model-parallel-size ({tp})"
                )
    if value("distribute_saved_activations"):
        needs = []
        if value("recompute_granularity") != "full":
            needs.append("--recompute-granularity full")
        if tp is not None and tp < 2:
            needs.append("--tensor-model-parallel-size >= 2 (it spreads them over TP)")
        if value("sequence_parallel"):
            needs.append("no --sequence-parallel")
        if needs:
            problems.append("--distribute-saved-activations needs " + " and ".join(needs))
    if value("save") and not value("save_interval"):
        problems.append("--save needs --save-interval (iterations between checkpoints)")
    return problems


def default_eval_interval(args) -> None:
    """Without ``--eval-interval`` there is no evaluation during training, as Megatron documents
    (``--eval-iters`` batches are evaluated once, after the last iteration); Megatron itself
    then fails sizing the validation data (``train_iters // None``). The interval becomes
    ``--train-iters`` + 1, which says exactly that."""
    train_iters = getattr(args, "train_iters", None)
    if (
        getattr(args, "eval_interval", 0) is None
        and isinstance(train_iters, int)
        and train_iters > 0
    ):
        args.eval_interval = train_iters + 1


#: The flags :func:`check_argv` reads from the command line (dest -> type; None: a switch),
#: exactly as Megatron's parser reads them (no abbreviations there either).
_ARGV_FLAGS = {
    **{name: int for name in _POSITIVE},
    "lr": float, "min_lr": float, "lr_warmup_init": float, "weight_decay": float,
    "clip_grad": float, "lr_warmup_fraction": float, "hidden_dropout": float,
    "attention_dropout": float, "lr_warmup_iters": int, "lr_warmup_samples": int,
    "eval_iters": int, "tensor_model_parallel_size": int, "recompute_granularity": str,
    "save": str, "distribute_saved_activations": None, "sequence_parallel": None,
}  # fmt: skip


def argv_settings(argv: list[str]) -> argparse.Namespace:
    """The settings of :func:`training_setting_problems` that ``argv`` (``--config`` expanded)
    gives explicitly, read without Megatron's parser (so before torch and Megatron load); a
    value that does not convert is left out (Megatron's parser reports it later)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for dest, kind in _ARGV_FLAGS.items():
        if kind is None:
            parser.add_argument(flag_name(dest), dest=dest, action="store_const", const=True)
        else:
            parser.add_argument(flag_name(dest), dest=dest)
    parser.add_argument("--mock-data", dest="mock_data", action="store_const", const=True)
    for name in ("data_path", "train_data_path", "valid_data_path", "test_data_path"):
        parser.add_argument(flag_name(name), dest=name, nargs="*")
    try:
        settings, _ = parser.parse_known_args(argv)
    except SystemExit:  # e.g. a flag without its value: Megatron's parser says so later
        return argparse.Namespace()
    for dest, kind in _ARGV_FLAGS.items():
        value = getattr(settings, dest)
        if kind is not None and value is not None:
            try:
                setattr(settings, dest, kind(value))
            except ValueError:
                setattr(settings, dest, None)
    return settings


def check_argv(argv: list[str]) -> argparse.Namespace:
    """The checks of :func:`training_setting_problems` on the settings the command line gives
    (:func:`argv_settings`), before torch and Megatron's parser load (~10 s): one ConfigError.
    Settings left to their defaults are checked after parsing, as before. Returns the settings
    read."""
    settings = argv_settings(expand_config_argv(argv))
    problems = training_setting_problems(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    return settings


def validate_sedd_args(args) -> None:
    """Fill derived SEDD defaults and reject flags that contradict the SEDD architecture."""
    from sedd_megatron.diffusion import graph_class  # lazy: torch; check_argv runs before it

    graph = graph_class(args.sedd_graph)  # argparse's choices have checked the name
    if args.sedd_noise is None:
        args.sedd_noise = graph.default_noise
    if args.sedd_scale_by_sigma is None:
        args.sedd_scale_by_sigma = graph.sigma_scaling
    default_eval_interval(args)
    problems = training_setting_problems(args)
    if args.sedd_scale_by_sigma and not graph.sigma_scaling:
        problems.append("--sedd-scale-by-sigma is only defined for --sedd-graph absorb")
    time_conditioning = getattr(args, "sedd_time_conditioning", "sigma")
    if time_conditioning == "none" and not graph.sigma_scaling:
        problems.append("--sedd-time-conditioning none is only defined for --sedd-graph absorb")
    elif time_conditioning == "none" and not args.sedd_scale_by_sigma:
        problems.append(
            "--sedd-time-conditioning none divides by e^sigma - 1 itself: drop "
            "--no-sedd-scale-by-sigma"
        )
    if not 0.0 <= args.ema_decay < 1.0:
        problems.append(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if not 0.0 < args.sedd_sampling_eps < 1.0:
        problems.append(f"--sedd-sampling-eps must be in (0, 1), got {args.sedd_sampling_eps}")
    if not 0.0 < args.sedd_sigma_min < args.sedd_sigma_max:
        problems.append("need 0 < --sedd-sigma-min < --sedd-sigma-max")
    if args.sedd_cond_dim <= 0:
        problems.append(f"--sedd-cond-dim must be positive, got {args.sedd_cond_dim}")
    problems += architecture_problems(args)
    if (
        getattr(args, "fp8", None)
        and getattr(args, "transformer_impl", None) != "transformer_engine"
    ):
        problems.append(
            "--fp8-format needs Transformer Engine (FP8 runs in TE's layers): install "
            "transformer_engine on the GPU machines, or drop the flag"
        )
    decay_iters = args.lr_decay_iters or args.train_iters
    if decay_iters is not None and args.lr_warmup_iters >= decay_iters:
        problems.append(
            f"--lr-warmup-iters ({args.lr_warmup_iters}) must be smaller than the decay "
            f"horizon (--lr-decay-iters or --train-iters: {decay_iters}); the reference default "
            "is 2500 warm-up iterations"
        )
    cp = args.context_parallel_size
    if cp > 1 and args.seq_length is not None and args.seq_length % (2 * cp):
        problems.append(
            f"--seq-length ({args.seq_length}) must be divisible by 2 x --context-parallel-size "
            f"({2 * cp}): each context-parallel rank holds two chunks of every sequence"
        )
    if problems:
        raise ConfigError("; ".join(problems))


def expand_config_argv(argv: list[str]) -> list[str]:
    """Replace ``--config FILE`` by the flags the YAML file lists, placed before the others.

    The YAML maps flag names (``num-layers`` or ``num_layers``) to values: a scalar gives
    ``--flag value``, a list ``--flag v1 v2``, ``true`` gives ``--flag`` and ``false`` omits it
    (or gives ``--no-flag`` for SEDD's on/off flags). Flags given on the command line come after
    the YAML's, so they win.
    """
    argv = list(argv)
    configs = []
    rest = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a YAML file")
            configs.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            configs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    expanded = []
    for path in configs:
        expanded += yaml_to_argv(path)
    return expanded + rest


_NEGATABLE = {"sedd-scale-by-sigma", "sedd-fused-kernels"}


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, first: int):
        super().__init__(f"line {line}: {key!r} is given twice (first on line {first})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (``num_layers`` and
    ``num-layers`` are one flag), where safe_load would keep the last silently."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                name = key.strip("-").replace("_", "-") if isinstance(key, str) else key
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(name)
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
                if first is not None:
                    raise _DuplicateKey(key, line, first)
                seen[name] = line
        return super().construct_mapping(node, deep=deep)


def yaml_to_argv(path: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a safe loader
    except _DuplicateKey as err:
        raise ConfigError(f"--config {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {err}") from err
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag names to values")
    tokens = []
    for key, value in data.items():
        if not isinstance(key, str) or not key.strip("-"):
            raise ConfigError(f"--config {path}: bad flag name {key!r}")
        flag = key.strip("-").replace("_", "-")
        if isinstance(value, bool):
            if value:
                tokens.append(f"--{flag}")
            elif flag in _NEGATABLE:
                tokens.append(f"--no-{flag}")
        elif isinstance(value, list):
            tokens += [f"--{flag}", *(str(v) for v in value)]
        elif value is None:
            continue
        elif isinstance(value, int | float | str):
            tokens += [f"--{flag}", str(value)]
        else:
            raise ConfigError(f"--config {path}: value of {key!r} must be a scalar or a list")
    return tokens


def parse_args(argv: list[str] | None = None):
    """Parse Megatron + SEDD arguments (with --config expansion) and validate them.

    Megatron's parser reads sys.argv, so the expanded argument list is put there first. SEDD's
    checks run before Megatron's validation so that a contradicting flag is reported at once.
    Returns Megatron's global ``args`` (validated, global variables set).
    """
    from megatron.training import arguments as margs
    from megatron.training.global_vars import set_global_variables

    argv = sys.argv[1:] if argv is None else argv
    sys.argv = [sys.argv[0], *expand_config_argv(argv)]
    args = margs.parse_args(extra_args_provider=add_sedd_args)
    if args.transformer_impl == "transformer_engine" and "--no-rope-fusion" not in sys.argv:
        args.apply_rope_fusion = True  # TE's fused rotary kernel goes with TE's layers
    if args.yaml_cfg is not None:
        raise ConfigError("use --config FILE.yaml (SEDD's flag files), not Megatron's --yaml-cfg")
    validate_sedd_args(args)
    default_tokenizer(args)
    if args.use_checkpoint_args:
        from megatron.training.checkpointing import load_args_from_checkpoint

        load_args_from_checkpoint(args)
    margs.validate_args(args, {})
    set_global_variables(args)
    return args
