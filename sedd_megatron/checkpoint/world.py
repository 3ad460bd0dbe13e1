"""The process group a conversion runs in, and rank-0-only writes that never leave ranks hanging."""

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from sedd_megatron.plain.layout import CheckpointError


@contextmanager
def distributed_world(tp: int | None = None, pp: int | None = None):
    """Use the initialised Megatron world, or start one (gloo on CPU) for the duration.

    ``tp``/``pp`` None accept any current layout (a new world then gets TP = PP = 1). A new
    world spans torchrun's processes (``WORLD_SIZE``), or just this process without torchrun.
    """
    from megatron.core import parallel_state as ps

    from sedd_megatron.runtime import destroy_distributed, init_distributed

    if dist.is_initialized() and ps.model_parallel_is_initialized():
        have = (
            ps.get_tensor_model_parallel_world_size(),
            ps.get_pipeline_model_parallel_world_size(),
        )
        if (tp, pp) != (None, None) and have != (tp or 1, pp or 1):
            raise CheckpointError(
                f"the running world has TP={have[0]}, PP={have[1]}, not {tp}/{pp}"
            )
        yield
        return
    tp, pp = tp or 1, pp or 1
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % (tp * pp):
        raise CheckpointError(
            f"TP={tp} x PP={pp} needs a multiple of {tp * pp} processes, got {world}: run under "
            f"torchrun --nproc_per_node={tp * pp}"
        )
    init_distributed(tp=tp, pp=pp)
    try:
        yield
    finally:
        destroy_distributed()


def is_rank0() -> bool:
    return dist.get_rank() == 0


def on_rank0(fn):
    """Run ``fn()`` on global rank 0 only; every rank returns its result or raises its error."""
    box = [None, None]
    if is_rank0():
        try:
            box[0] = fn()
        except Exception as err:  # re-raised below, on every rank
            box[1] = err if isinstance(err, CheckpointError) else CheckpointError(repr(err))
            if dist.get_world_size() == 1:
                raise
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


def new_output_dir(path: str | Path) -> Path:
    """``path`` as a Path, which must not exist yet (its parent is created)."""
    target = Path(path)
    if target.exists() or target.is_symlink():
        raise CheckpointError(f"output {target} already exists (choose a new directory)")
    return target


def staging_path(target: Path) -> Path:
    """A hidden sibling of ``target`` (same file system, so a rename publishes it atomically);
    the same name on every rank."""
    return Path(on_rank0(lambda: str(target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")))


@contextmanager
def published(staging: Path, target: Path):
    """Rename ``staging`` to ``target`` after the body succeeds on all ranks; else delete it."""
    try:
        yield
        on_rank0(lambda: _publish(staging, target))
    except BaseException:
        if is_rank0():
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, target: Path) -> None:
    if target.exists():
        raise CheckpointError(f"output {target} appeared while converting; left it untouched")
    os.rename(staging, target)
