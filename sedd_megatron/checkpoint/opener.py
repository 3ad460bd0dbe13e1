"""Opening a model directory as a :class:`~sedd_megatron.models.score_model.ScoreModel`.

:func:`open_model` is the one way sampling, evaluation and the tools load a model: the plain
twin in this process, or this rank's stage of SEDDModel in the caller's Megatron world (which it
never starts: entry points do, with ``sedd_megatron.runtime.world``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sedd_megatron.checkpoint import locate
from sedd_megatron.checkpoint.loader import load_sedd_model
from sedd_megatron.checkpoint.rank0_writes import require_world
from sedd_megatron.errors import CheckpointError
from sedd_megatron.models.score_model import MegatronScoreModel, PlainScoreModel, ScoreModel

BACKENDS = ("auto", "plain", "megatron")


def in_distributed_run() -> bool:
    """Whether this process is one of several (an initialised world, or torchrun's env)."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    return initialised or int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_backend(source: str | os.PathLike, backend: str = "auto") -> str:
    """ "plain" or "megatron" for ``backend`` ("auto": plain for a plain directory outside a
    distributed run, else megatron)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (expected auto, plain or megatron)")
    if backend == "auto":
        plain = locate.is_plain_dir(source) and not in_distributed_run()
        return "plain" if plain else "megatron"
    return backend


def open_model(
    source: str | os.PathLike,
    backend: str = "auto",
    *,
    iteration: int | None = None,
    use_ema: bool | None = None,
    seq_length: int | None = None,
    device: str | torch.device | None = None,
    verify_checksums: bool = True,
) -> ScoreModel:
    """The model in ``source`` (a pretrain_sedd.py checkpoint or a published-layout directory).

    ``backend``: "plain" (the plain twin ``sedd_megatron.plain.SEDD`` in this process, on
    ``device`` or the CPU; a published-layout directory only), "megatron" (this rank's stage of
    SEDDModel at the current TP/PP, via :func:`~sedd_megatron.checkpoint.load_sedd_model`; needs
    an initialised Megatron world, e.g. ``with sedd_megatron.runtime.world(tp=..., pp=...):``,
    and raises CheckpointError without one) or "auto" (plain for a plain directory outside a
    distributed run, else megatron). ``iteration`` / ``use_ema`` (None: EMA weights when saved)
    apply to Megatron checkpoints; ``seq_length`` defaults to the training length. The files
    are checked against the checkpoint's checksum manifest first (CheckpointError naming the
    first differing file; a note on stderr when there is no manifest) unless
    ``verify_checksums`` is False.
    """
    if not Path(source).exists():
        raise CheckpointError(f"model not found: {source}")
    backend = resolve_backend(source, backend)
    if backend == "plain":
        if not locate.is_plain_dir(source):
            raise CheckpointError(f"{source}: not a plain model directory (config.json + weights)")
        return PlainScoreModel.from_pretrained(
            source, seq_length, device=device, verify=verify_checksums
        )
    locate.source_kind(source)  # a clear error for a directory that is no checkpoint at all
    if verify_checksums:
        locate.verify_checksums(source, iteration)  # before the world is needed
    require_world(what=f"opening {source} with the Megatron backend")
    model, info = load_sedd_model(
        source,
        iteration=iteration,
        use_ema=use_ema,
        seq_length=seq_length,
        verify_checksums=verify_checksums,
    )
    return MegatronScoreModel(model, info, seq_length)
