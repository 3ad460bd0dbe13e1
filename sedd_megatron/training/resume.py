"""Resuming from ``--load``: the run's settings against the ones the checkpoint was saved with.

:func:`check_resume_args` compares the ``args`` Megatron saved in the checkpoint's common state
(read weights-only through ``checkpoint.locate``) with this run's, before Megatron loads
anything: a different architecture or a different SEDD meaning of the weights is one
ConfigError listing each differing flag with both values. Everything else (iterations, the
learning-rate schedule, data, parallel layout, batch sizes, intervals, precision) may change on
resume as Megatron allows; a changed schedule then needs one of Megatron's scheduler flags,
which :func:`scheduler_mismatch_message` names when Megatron's check fails.
"""

from __future__ import annotations

import os
from pathlib import Path

from sedd_megatron.errors import ConfigError
from sedd_megatron.training.arguments import flag_name

#: Settings that shape the weights: a checkpoint saved with other values cannot be loaded.
ARCHITECTURE = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels",
    "group_query_attention", "normalization", "layernorm_epsilon",
    "position_embedding_type", "rotary_base", "rotary_percent", "add_bias_linear", "add_qkv_bias",
    "swiglu", "qk_layernorm", "untie_embeddings_and_output_weights", "vocab_size",
)  # fmt: skip
#: Settings that give the weights their meaning under SEDD (graph, noise, conditioning).
SEDD_MEANING = (
    "sedd_graph", "sedd_noise", "sedd_time_conditioning", "sedd_scale_by_sigma", "sedd_cond_dim",
)  # fmt: skip
GEOMETRIC_RANGE = ("sedd_sigma_min", "sedd_sigma_max")  # used by the geometric schedule only

#: Flags that resolve a changed learning-rate schedule (Megatron's names).
SCHEDULER_FLAGS = "--override-opt_param-scheduler or --use-checkpoint-opt_param-scheduler"
_SCHEDULE_FLAGS = {
    "learning rate": "--lr",
    "minimum learning rate": "--min-lr",
    "warmup iterations": "--lr-warmup-iters/--lr-warmup-samples/--lr-warmup-fraction",
    "total number of iterations": "--train-iters/--lr-decay-iters",
    "learning rate decay style": "--lr-decay-style",
    "start weight decay": "--start-weight-decay/--weight-decay",
    "end weight decay": "--end-weight-decay/--weight-decay",
    "total number of weight decay iterations": "--train-iters",
    "weight decay incr style": "--weight-decay-incr-style",
}


def differing_settings(saved, run) -> list[tuple[str, object, object]]:
    """(flag, checkpoint value, run value) for each architecture or SEDD setting that differs
    between the saved ``args`` and this run's; settings either side lacks are skipped."""
    names = list(ARCHITECTURE) + list(SEDD_MEANING)
    if "geometric" in (getattr(saved, "sedd_noise", None), getattr(run, "sedd_noise", None)):
        names += GEOMETRIC_RANGE
    if getattr(saved, "group_query_attention", False) or getattr(run, "group_query_attention", 0):
        names.append("num_query_groups")  # else Megatron sets it from the heads later
    if getattr(run, "position_embedding_type", None) == "learned_absolute":
        names.append("max_position_embeddings")  # a learned table of that many rows
    same_tp = getattr(saved, "tensor_model_parallel_size", None) == getattr(
        run, "tensor_model_parallel_size", None
    )
    if same_tp:  # the padding depends on TP; the vocabulary itself is compared always
        names.append("padded_vocab_size")
    found = []
    for name in names:
        if not (hasattr(saved, name) and hasattr(run, name)):
            continue
        old, new = getattr(saved, name), getattr(run, name)
        if old != new:
            found.append((flag_name(name), old, new))
    return found


def read_saved_args(folder: str):
    """The ``args`` saved in a torch_dist iteration directory (None: another format, or none
    saved). Read through the project's safe path (restricted metadata, weights-only)."""
    from sedd_megatron.checkpoint import locate  # lazy: torch and Megatron

    if not os.path.isfile(os.path.join(folder, "metadata.json")):
        return None  # legacy --ckpt-format torch: Megatron checks it while loading
    where = locate.CheckpointIteration(Path(folder), 0)
    locate.check_iteration(where)
    from megatron.core import dist_checkpointing

    with locate.safe_megatron_reads(where.path):
        common = dist_checkpointing.load_common_state_dict(str(where.path))
    return common.get("args") if isinstance(common, dict) else None


def check_resume_args(args, folder: str | None) -> None:
    """ConfigError listing every architecture / SEDD setting of this run that differs from the
    checkpoint in ``folder`` (the iteration directory ``--load`` will read; None: nothing)."""
    if folder is None:
        return
    saved = read_saved_args(folder)
    if saved is None:
        return
    found = differing_settings(saved, args)
    if found:
        listed = "; ".join(f"{flag} {old} (this run: {new})" for flag, old, new in found)
        raise ConfigError(
            f"--load {args.load}: {folder} was saved with other model settings than this run's: "
            f"{listed}; its weights mean something else under these settings: resume with the "
            "checkpoint's values (or start a new run without --load)"
        )


def scheduler_mismatch_message(name: str, run_value, saved_value) -> str:
    """The one line for Megatron's failed scheduler check of ``name``."""
    flags = _SCHEDULE_FLAGS.get(name)
    which = f" ({flags})" if flags else ""
    if "iterations" in name:
        which += " (counted in samples)"  # Megatron's steps: iterations x global batch size
    return (
        f"the learning-rate schedule differs from the checkpoint's: {name}{which} is "
        f"{run_value} in this run and {saved_value} in the checkpoint; pass "
        "--override-opt_param-scheduler to use this run's schedule, or "
        "--use-checkpoint-opt_param-scheduler to keep the checkpoint's"
    )
