"""pretrain_sedd.py checkpoint -> published layout (config.json + model.safetensors)."""

from dataclasses import dataclass
from pathlib import Path

import torch

from sedd_megatron import checksums
from sedd_megatron.checkpoint import locate, rank0_writes, verify
from sedd_megatron.checkpoint.loader import SEDDModelInfo, load_sedd_model
from sedd_megatron.errors import CheckpointError
from sedd_megatron.models.score_model import MegatronScoreModel, PlainScoreModel
from sedd_megatron.plain import SEDD


@dataclass(frozen=True)
class ExportResult:
    path: Path
    info: SEDDModelInfo  # what was exported (iteration, EMA or raw, config)
    max_relative_difference: float | None  # of the log-scores, when verified


def export_checkpoint(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    *,
    iteration: int | None = None,
    use_ema: bool | None = None,
    safetensors: bool = True,
    pytorch_bin: bool = False,
    verify_outputs: bool = False,
    verify_checksums: bool = True,
) -> ExportResult:
    """Write iteration ``iteration`` (default: the latest) of a pretrain_sedd.py checkpoint to
    ``out_dir`` in the published layout, loadable by ``plain.SEDD.from_pretrained``.

    ``use_ema``: None = the EMA weights if saved, True = require them, False = raw weights.
    Runs in the caller's initialised Megatron world (any TP/PP: shards are gathered, rank 0
    writes; start one with ``sedd_megatron.runtime.world()``), else raises CheckpointError.
    ``out_dir`` must be new (see ``rank0_writes.new_output_dir``); it appears complete or not at
    all.
    ``verify_outputs`` compares the log-scores of the written files with the Megatron model's.
    ``verify_checksums`` checks the source's checksum manifest first; the output gets its own.
    """
    target = rank0_writes.new_output_dir(out_dir, source=ckpt_dir)
    if locate.source_kind(ckpt_dir) != "megatron":
        raise CheckpointError(
            f"{ckpt_dir} is not a pretrain_sedd.py checkpoint (nothing to export)"
        )
    where = locate.find_iteration(ckpt_dir, iteration)  # fail early, before the world
    if verify_checksums:
        checksums.verify_directory(where.path)
    rank0_writes.require_world(what="export_checkpoint")
    model, info = load_sedd_model(
        ckpt_dir, iteration=iteration, use_ema=use_ema, verify_checksums=verify_checksums
    )
    from sedd_megatron.models.sedd.state_dict_adapter import (  # lazy: imports megatron
        reference_state_dict,
    )

    reference = reference_state_dict(model)
    staging = rank0_writes.staging_path(target)
    with rank0_writes.published(staging, target):
        rank0_writes.on_rank0(
            lambda: plain_model(info.config, reference).save_pretrained(
                staging, safetensors=safetensors, pytorch_bin=pytorch_bin
            )
        )
        difference = None
        if verify_outputs:
            difference = verify.compare(
                MegatronScoreModel(model, info),
                PlainScoreModel(SEDD.from_pretrained(staging)),
                info.config,
            )
            check_difference(difference)
    return ExportResult(target, info, difference)


def plain_model(config, reference: dict[str, torch.Tensor]):
    """A plain-PyTorch SEDD holding exactly ``reference`` (no copy of the tensors)."""
    with torch.device("meta"):
        model = SEDD(config)
    model.load_state_dict(reference, strict=True, assign=True)
    return model.eval()


def check_difference(difference: float) -> None:
    if not difference <= verify.TOLERANCE:
        raise CheckpointError(
            f"verification failed: the log-scores differ by {difference:.3g} (relative), more "
            f"than {verify.TOLERANCE:g}; nothing was written"
        )
