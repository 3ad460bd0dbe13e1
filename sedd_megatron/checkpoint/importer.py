"""Published layout -> a pretrain_sedd.py (Megatron torch_dist) checkpoint at a chosen TP/PP.

The result is a Megatron *release* checkpoint: the tracker names ``release`` and
``release/`` holds the model and EMA tensors (EMA = the imported weights) plus the common state
with the pretrain_sedd.py ``args`` that build this architecture. ``pretrain_sedd.py --load``
starts from it at iteration 0 with a fresh optimizer (as with ``--finetune``; Megatron skips
optimizer and RNG state for release checkpoints), and ``--use-checkpoint-args`` reads the
architecture from it.
"""

import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

from sedd_megatron import checksums
from sedd_megatron.checkpoint import configs, locate, rank0_writes, verify
from sedd_megatron.checkpoint.export import check_difference, plain_model
from sedd_megatron.checkpoint.layouts import check_config_layout
from sedd_megatron.checkpoint.loader import build_model, load_sedd_model
from sedd_megatron.errors import CheckpointError, ConfigError
from sedd_megatron.models.score_model import MegatronScoreModel, PlainScoreModel
from sedd_megatron.training.arguments import add_sedd_args, validate_sedd_args

CHECKPOINT_VERSION = 3.0  # what megatron.training.checkpointing writes


@dataclass(frozen=True)
class ImportResult:
    path: Path
    tp: int
    pp: int
    max_relative_difference: float | None  # of the log-scores, when verified


def import_checkpoint(
    plain_dir: str | Path,
    out_dir: str | Path,
    *,
    tp: int = 1,
    pp: int = 1,
    ema_decay: float | None = None,
    verify_outputs: bool = False,
    verify_checksums: bool = True,
) -> ImportResult:
    """Convert a published-layout directory into a Megatron checkpoint split for TP x PP.

    Call on every rank of an initialised world whose TP/PP are ``tp``/``pp`` (the caller starts
    it: ``with sedd_megatron.runtime.world(tp, pp):``, under torchrun with tp * pp processes
    for tp * pp > 1); else CheckpointError. ``ema_decay`` (default: config.json's
    ``training.ema``, else 0.9999) is recorded in the saved args; 0 saves no EMA weights.
    ``out_dir`` must be new (see ``rank0_writes.new_output_dir``); it appears complete or not at
    all.
    A layout that does not fit the model raises ConfigError; blocks that ``pp`` does not divide
    are split by ``checkpoint.layouts.pipeline_split`` (recorded in the saved args as Megatron's
    ``--decoder-first/last-pipeline-num-layers``). ``verify_checksums`` checks the input's
    checksum manifest first; the release directory gets its own.
    """
    config, reference = locate.read_plain_checkpoint(plain_dir, verify_checksums=verify_checksums)
    check_config_layout(config, tp, pp)
    target = rank0_writes.new_output_dir(out_dir, source=plain_dir)
    argv = configs.pretrain_argv(config, tp=tp, pp=pp)
    if ema_decay is not None:
        argv += ["--ema-decay", repr(float(ema_decay))]
    rank0_writes.require_world(tp, pp, what="import_checkpoint")
    from sedd_megatron.models.sedd.ema import attach_ema  # lazy: imports megatron
    from sedd_megatron.models.sedd.state_dict_adapter import (  # lazy: imports megatron
        load_reference_state_dict,
    )

    args = parse_pretrain_args(argv, save=target)
    setattr(args, configs.SOURCE_CONFIG_ARG, config.to_dict())
    model = build_model(config, divisible_by=args.make_vocab_size_divisible_by)
    load_reference_state_dict(model, reference)
    if args.ema_decay > 0:
        attach_ema(model, args.ema_decay)
    staging = rank0_writes.staging_path(target)
    with rank0_writes.published(staging, target):
        save_release_checkpoint(model, args, staging)
        difference = None
        if verify_outputs:
            loaded = MegatronScoreModel(*load_sedd_model(staging))
            reference_model = PlainScoreModel(plain_model(config, reference))
            difference = verify.compare(loaded, reference_model, config)
            check_difference(difference)
    return ImportResult(target, tp, pp, difference)


def parse_pretrain_args(argv: list[str], save: Path):
    """Megatron's validated ``args`` for pretrain_sedd.py flags (global state left untouched)."""
    from megatron.training import arguments as margs

    argv = [*argv, "--save", str(save), "--save-interval", "1"]
    saved_argv = sys.argv
    sys.argv = ["pretrain_sedd.py", *argv]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = margs.parse_args(extra_args_provider=add_sedd_args)
            validate_sedd_args(args)
            margs.validate_args(args, {})
    except (ConfigError, AssertionError, ValueError, SystemExit) as err:
        raise CheckpointError(
            f"config.json gives invalid pretrain_sedd.py arguments ({' '.join(argv)}): {err!r}"
        ) from err
    finally:
        sys.argv = saved_argv
    args.load = None
    return args


def save_release_checkpoint(model, args, directory: Path) -> None:
    """Save ``model`` (and its EMA child) as Megatron's release checkpoint under ``directory``.

    The same state Megatron's save_checkpoint writes, minus optimizer, scheduler and RNG state,
    plus the checksum manifest of ``release/``.
    """
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.training.checkpointing import (
        _build_sharded_state_dict_metadata,
        get_checkpoint_name,
        get_checkpoint_tracker_filename,
    )

    metadata = _build_sharded_state_dict_metadata(
        args, dp_cp_group=ps.get_data_parallel_group(with_context_parallel=True)
    )
    state = {
        "args": args,
        "checkpoint_version": CHECKPOINT_VERSION,
        "iteration": 0,
        "num_floating_point_operations_so_far": 0,
        "model": model.sharded_state_dict(metadata=metadata),
    }
    release_dir = Path(get_checkpoint_name(str(directory), 0, release=True, return_base_dir=True))
    rank0_writes.on_rank0(lambda: release_dir.mkdir(parents=True))
    checksums.hash_megatron_shard_writes()  # rank 0's shards: no re-read for the manifest
    dist_checkpointing.save(
        state,
        str(release_dir),
        content_metadata={k: v for k, v in metadata.items() if k != "dp_cp_group"},
        preprocess_common_before_consistancy_check=_without_rank,
    )
    rank0_writes.on_rank0(
        lambda: checksums.write_manifest(release_dir)
    )  # every rank's files written
    rank0_writes.on_rank0(
        lambda: Path(get_checkpoint_tracker_filename(str(directory))).write_text("release")
    )


def _without_rank(common: dict) -> dict:
    """The common state as compared across ranks: args minus the per-rank fields."""
    args = {k: v for k, v in vars(common["args"]).items() if k not in ("rank", "local_rank")}
    return {**common, "args": args}
