"""The world a conversion needs, and rank-0-only writes that never leave ranks hanging."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from sedd_megatron import atomic
from sedd_megatron.errors import CheckpointError
from sedd_megatron.runtime import world_layout


def require_world(tp: int | None = None, pp: int | None = None, what: str = "this") -> None:
    """Raise a CheckpointError unless a Megatron world is initialised (with TP/PP ``tp``/``pp``;
    None accepts any). Library functions never start one: entry points do, with
    ``sedd_megatron.runtime.world(tp=..., pp=...)``."""
    have = world_layout()
    if have is None:
        layout = f"tp={tp or 1}, pp={pp or 1}"
        raise CheckpointError(
            f"{what} needs an initialised Megatron world: run it inside "
            f"`with sedd_megatron.runtime.world({layout}):` (under torchrun for TP x PP > 1)"
        )
    if (tp, pp) != (None, None) and have != (tp or 1, pp or 1):
        raise CheckpointError(f"the running world has TP={have[0]}, PP={have[1]}, not {tp}/{pp}")


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


def new_output_dir(path: str | Path, source: str | Path | None = None) -> Path:
    """``path`` as a Path for a new output directory, checked before any work: it must not
    exist (nor be a dangling link), its nearest existing ancestor must be a writable directory
    (missing parents are created only when the output is published), and it must not lie inside
    ``source`` (the checkpoint being read). CheckpointError otherwise; nothing is left behind."""
    if not str(path).strip():
        raise CheckpointError("the output path is empty")
    target = Path(path)
    if target.is_symlink() or target.exists():
        kind = "a file" if target.is_file() else "a directory" if target.is_dir() else "a link"
        raise CheckpointError(f"output {target} already exists ({kind}): choose a new directory")
    ancestor = _nearest_existing(target)
    if not ancestor.is_dir():
        raise CheckpointError(f"cannot create output {target}: {ancestor} is not a directory")
    try:  # a real probe: os.access says yes to root on read-only or special file systems
        os.rmdir(tempfile.mkdtemp(prefix=".sedd-write-probe.", dir=ancestor))
    except OSError as err:
        raise CheckpointError(
            f"cannot create output {target}: cannot write in {ancestor} ({err.strerror})"
        ) from None
    if source is not None:
        inside, where = target.resolve(), Path(source).resolve()
        if inside == where or where in inside.parents:
            raise CheckpointError(
                f"output {target} lies inside the source {source}: choose a directory outside it"
            )
    return target


def _nearest_existing(target: Path) -> Path:
    """The closest of ``target``'s parents that exists (or is a link)."""
    for parent in target.parents:
        if parent.is_symlink() or parent.exists():
            return parent
    return Path.cwd()


def staging_path(target: Path) -> Path:
    """A hidden sibling of ``target``, in its nearest existing parent (same file system, so a
    rename publishes it atomically); the same name on every rank."""
    return Path(
        on_rank0(lambda: str(atomic.temporary_sibling(_nearest_existing(target) / target.name)))
    )


@contextmanager
def published(staging: Path, target: Path):
    """Rename ``staging`` to ``target`` after the body succeeds on all ranks; else delete it."""
    try:
        yield
        on_rank0(lambda: _publish(staging, target))
    except BaseException:
        if is_rank0():
            atomic.remove(staging)
        raise


def _publish(staging: Path, target: Path) -> None:
    if target.is_symlink() or target.exists():
        raise CheckpointError(f"output {target} appeared while converting; left it untouched")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, target)
