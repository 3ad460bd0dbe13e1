"""Atomic writes: a file or directory is written under a temporary sibling name and renamed over
its target only when complete, so readers see the old version or the new one, never half of one,
and a failed write leaves no temporary file behind and the target as it was.

The temporary name is hidden and unique (``.NAME.XXXXXXXX.tmp``) and lies in the target's
directory (the rename must stay on one file system). New files get mode 0666 and new
directories 0777, less the process's umask, as ``open(path, "w")`` and ``mkdir`` give them
(``tempfile.mkstemp``/``mkdtemp`` would make them owner-only); ``permissions`` overrides it.
This module imports nothing else of the package.
"""

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A new hidden name beside ``path``: ``.NAME.XXXXXXXX.tmp`` (nothing is created)."""
    target = Path(path)
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"


def remove(path: str | os.PathLike) -> None:
    """Delete the file or directory tree at ``path`` if there is one (best effort)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:  # absent (or undeletable): nothing more to do
            pass


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling name for the caller to write ``path``'s new content to.

    On success the temporary file is renamed over ``path`` (``os.replace``); if the block raises,
    whatever was written there is deleted and ``path`` is left untouched.
    """
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


@contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    encoding: str | None = "utf-8",
    newline: str | None = None,
    fsync: bool = False,
    permissions: int = 0o666,
) -> Iterator[IO]:
    """``open(path, mode)`` ("w" or "wb") for an atomic write (see :func:`atomic_path`).

    ``fsync`` flushes the data to disk before the rename. The new file is created with
    ``permissions`` (less the umask), like ``os.open``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', not {mode!r}")
    if mode == "wb":
        encoding = None
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, permissions)
        with open(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def atomic_write_text(
    path: str | os.PathLike,
    text: str,
    *,
    newline: str | None = None,
    fsync: bool = False,
    permissions: int = 0o666,
) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w", newline=newline, fsync=fsync, permissions=permissions) as f:
        f.write(text)


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, *, fsync: bool = False, permissions: int = 0o666
) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb", fsync=fsync, permissions=permissions) as f:
        f.write(data)


@contextmanager
def atomic_directory(path: str | os.PathLike, *, permissions: int | None = None) -> Iterator[Path]:
    """Yield a new, empty temporary sibling directory to fill with ``path``'s new content.

    On success it is renamed to ``path``; an existing ``path`` is replaced whole (moved aside
    first and restored if the rename fails). If the block raises, the temporary directory is
    deleted and ``path`` is left untouched. The directory's mode is 0777 less the umask (as
    ``mkdir`` makes it), or ``permissions`` (set exactly, with ``chmod``) when given.
    """
    target = Path(path)
    staging = temporary_sibling(target)
    os.mkdir(staging, 0o777)
    try:
        yield staging
        if permissions is not None:
            os.chmod(staging, permissions)
        _replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_directory(source: Path, target: Path) -> None:
    if not target.exists():
        os.rename(source, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rename(target, old / "replaced")
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(old / "replaced", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
