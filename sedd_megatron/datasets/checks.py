"""Checks of user settings and paths made before any work starts, shared by the data and
evaluation tools (and their library entry points).

Every check raises ``error`` (default :class:`~sedd_megatron.errors.DataError`; the evaluation
code passes :class:`~sedd_megatron.errors.EvalError`) with a message naming the setting. ``name``
is how the setting is shown: a command-line flag (``--batch-size``) or a keyword argument. This
module imports only the standard library.
"""

from __future__ import annotations

import codecs
import os

from sedd_megatron.errors import DataError


def check_int(
    value, name: str, *, minimum: int = 1, optional: bool = False, error=DataError
) -> None:
    """``value`` is an integer >= ``minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        what = {0: "non-negative", 1: "positive"}.get(minimum, f">= {minimum}")
        raise error(f"{name} must be {what}, got {value}")


def check_encoding(encoding: str, name: str = "encoding", error=DataError) -> None:
    """``encoding`` names a text codec Python knows."""
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise error(f"{name}: unknown text encoding {encoding!r}") from None


def check_input_file(path, name: str, error=DataError) -> None:
    """``path`` is an existing regular file that this process may read."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise error(f"{name}: file not found: {path}")
    if not os.path.isfile(path):
        raise error(f"{name}: not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise error(f"{name}: no permission to read {path}")


def _writable_dir(directory: str) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def check_output_file(path, name: str, error=DataError) -> None:
    """``path`` can be written as a file (atomically: a temporary sibling renamed over it):
    not a directory, and its directory exists and is writable."""
    path = os.fspath(path)
    if not path:
        raise error(f"{name}: empty path")
    if os.path.isdir(path):
        raise error(f"{name}: {path} is a directory; give a file name")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise error(f"{name}: {path} exists and is not a regular file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise error(f"{name}: directory {parent} does not exist (for {path})")
    if not _writable_dir(parent):
        raise error(f"{name}: no permission to write in {parent} (for {path})")


def check_output_dir(path, name: str, error=DataError) -> None:
    """``path`` is a writable directory, or can be created (its nearest existing ancestor is a
    writable directory)."""
    path = os.fspath(path)
    if not path:
        raise error(f"{name}: empty path")
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise error(f"{name}: {path} exists and is not a directory")
        if not _writable_dir(path):
            raise error(f"{name}: no permission to write in {path}")
        return
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise error(f"{name}: cannot create {path}: {ancestor} is not a directory")
    if not _writable_dir(ancestor):
        raise error(f"{name}: cannot create {path}: no permission to write in {ancestor}")


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(size: float) -> str:
    """``size`` bytes as B, KB, MB, GB, TB or PB (powers of 1000), three significant digits."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000:
            return f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} PB"


def check_memory(name: str, value: int, bytes_each: int, what: str, error=DataError) -> None:
    """``value`` (the setting ``name``) of ``what``, each holding at least ``bytes_each``
    bytes at once, must fit in this machine's physical memory: one clear error instead of an
    allocation traceback (or a machine driven into swap) much later."""
    total = physical_memory()
    needed = value * bytes_each
    if total is not None and needed > total:
        raise error(
            f"{name} {value} would need at least {format_bytes(needed)} of memory ({what}: "
            f"{format_bytes(bytes_each)} each), more than this machine's {format_bytes(total)}"
        )
