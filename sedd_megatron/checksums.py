"""Content checksums of checkpoint directories: a manifest written at save time, checked on load.

Every checkpoint this project writes (a pretrain_sedd.py iteration directory, an imported
release directory, a published-layout directory from ``save_pretrained`` or an export) gets
``sedd_checksums.json``: the relative path, size and XXH3-128 hash of each of its files.
Readers call :func:`verify_directory` before using the files; a difference is one
CheckpointError naming the file. A directory without a manifest (saved before this existed, or
by another tool) is read unverified, with one note on stderr per directory and process.

The hash is XXH3-128 (the ``xxhash`` package): checksums here guard against corruption (a bad
disk, a torn copy between clusters), not against an adversary, and XXH3 streams at about 10 GB/s
on one core where SHA-256 manages about 1 GB/s even with the CPU's SHA instructions (BLAKE2b is
slower still). The values are the ones ``xxh128sum`` prints; a manifest naming ``sha256`` is
verified as well.

The project's saves hash their large files while writing them (:class:`HashingWriter`: each
write hashed on a second thread alongside the file write; ``plain.save_safetensors``; Megatron's
torch_dist shards through :func:`hash_megatron_shard_writes`), and :func:`write_manifest` reads
back only the files it has no such digest for (small ones, other ranks' shards, an async-save
worker's shards, anything changed since). At SEDD-medium size (1.4 GB float32, page cache, a
shared 2-core machine, medians of 15 reps of ``benchmarks/bench_checkpoint_checksums.py``) the
manifest added 0.7 % to a safetensors save (0.28 s) and nothing measurable to a torch_dist save
(1.2 s, fsynced; median -3 %, its reps spread over 0.9-2.2 s), where hashing by re-reading the
files added 28 % and 2-25 % (three runs); SHA-256 by re-reading took as long as the save.
Files re-read are read in 4 MiB chunks and hashed in parallel threads (the hashers release the
GIL).

This module imports nothing of the package but ``atomic`` and ``errors`` (and Megatron only
inside :func:`hash_megatron_shard_writes`).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

from sedd_megatron.atomic import atomic_write_text
from sedd_megatron.errors import CheckpointError

MANIFEST_NAME = "sedd_checksums.json"
ALGORITHM = "xxh3_128"
HASHERS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
CHUNK_BYTES = 4 << 20
FORMAT = "sedd-checksums/1"
SKIP_HINT = "--no-verify-checksums skips this check"

_NOTED: set[str] = set()  # directories whose missing manifest was already reported
_VERIFIED: set[tuple] = set()  # (directory, manifest, its files' sizes and mtimes) checked
#: Files hashed while they were written (HashingWriter): real path -> (stat stamp, digest).
_WRITTEN: dict[str, tuple[tuple, str]] = {}
_WRITTEN_LOCK = threading.Lock()
_POOL: dict[str, ThreadPoolExecutor] = {}
INLINE_BYTES = 1 << 20  # writes smaller than this are hashed on the writing thread
MAX_WRITTEN = 4096  # digests kept at most (the oldest go first)


def file_digest(path: str | os.PathLike, algorithm: str = ALGORITHM) -> str:
    """The hash (hex) of a file's content, read in :data:`CHUNK_BYTES` chunks."""
    digest = HASHERS[algorithm]()
    with open(path, "rb") as f:
        buffer = bytearray(CHUNK_BYTES)
        view = memoryview(buffer)
        while True:
            count = f.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()


def checkpoint_files(directory: str | os.PathLike) -> list[str]:
    """Relative paths (POSIX) of the regular files under ``directory``, manifest excluded."""
    root = Path(directory)
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                relative = path.relative_to(root).as_posix()
                if relative != MANIFEST_NAME:
                    found.append(relative)
    return sorted(found)


def _workers(count: int) -> int:
    return max(1, min(count, os.cpu_count() or 1, 8))


def _stamp(info: os.stat_result) -> tuple:
    return (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)


def _hash_pool() -> ThreadPoolExecutor:
    with _WRITTEN_LOCK:
        if "pool" not in _POOL:
            _POOL["pool"] = ThreadPoolExecutor(_workers(4), thread_name_prefix="sedd-hash")
        return _POOL["pool"]


def _after_fork_in_child() -> None:
    """A forked child (an async-save worker) has neither the parent's pool threads nor its
    lock holders: start both afresh."""
    global _WRITTEN_LOCK
    _WRITTEN_LOCK = threading.Lock()
    _POOL.clear()
    _WRITTEN.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class HashingWriter:
    """A binary file open for writing whose content is hashed as it is written.

    Each large ``write`` is hashed on a pool thread while the writing thread writes it (xxhash
    and file writes release the GIL), and returns when both are done, so the caller may reuse
    its buffer. On ``close`` the digest is kept with the file's size, modification time and
    inode, and :func:`write_manifest` takes it instead of re-reading the file while those are
    unchanged (a rewrite to the same size within the file system's timestamp granularity, a few
    milliseconds, would go unnoticed; nothing here rewrites a checkpoint file). A ``seek``,
    ``truncate``, ``writelines`` or failed write makes the stream unhashed (the manifest then
    re-reads the file). Other attributes are the file's.
    """

    def __init__(self, path: str | os.PathLike):
        self._path = os.path.realpath(path)
        self._file = builtins.open(path, "wb")
        self._digest = HASHERS[ALGORITHM]()
        self._count = 0
        self._valid = True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if not self._valid:
            return self._file.write(view)
        if view.nbytes < INLINE_BYTES:
            self._digest.update(view)
            written = self._file.write(view)
        else:
            hashing = _hash_pool().submit(self._digest.update, view)
            try:
                written = self._file.write(view)
            except BaseException:
                self._valid = False
                raise
            finally:
                hashing.result()
        if written != view.nbytes:  # a raw or non-blocking stream: a partial write
            self._valid = False
        self._count += view.nbytes
        return written

    def seek(self, offset, whence=os.SEEK_SET):
        if (offset, whence) != (self._count, os.SEEK_SET):
            self._valid = False
        return self._file.seek(offset, whence)

    def truncate(self, size=None):
        self._valid = False
        return self._file.truncate(size)

    def writelines(self, lines):
        self._valid = False
        return self._file.writelines(lines)

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self._file.flush()
            info = os.fstat(self._file.fileno())
        finally:
            self._file.close()
        if self._valid and info.st_size == self._count:
            with _WRITTEN_LOCK:
                _WRITTEN.pop(self._path, None)
                _WRITTEN[self._path] = (_stamp(info), self._digest.hexdigest())
                while len(_WRITTEN) > MAX_WRITTEN:  # files no manifest asked for (other ranks')
                    _WRITTEN.pop(next(iter(_WRITTEN)))

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_hashed(path, mode: str = "r", *args, **kwargs):
    """``open``, but a file opened with mode ``"wb"`` (and no other argument) is a
    :class:`HashingWriter`."""
    if mode == "wb" and not args and not kwargs:
        return HashingWriter(path)
    return builtins.open(path, mode, *args, **kwargs)


def hash_megatron_shard_writes() -> None:
    """Make Megatron-Core's torch_dist writer (``FileSystemWriterAsync.write_preloaded_data``,
    which opens each shard file with the module's ``open``) hash the shards as it writes them.

    Takes effect where the writer runs in this process (a synchronous save); the shards an
    ``--async-save`` worker process writes, and the files of other ranks, are re-read by
    :func:`write_manifest`. Idempotent.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    filesystem_async.open = open_hashed


def _written_digest(path: Path) -> str | None:
    """The digest :class:`HashingWriter` took of ``path`` (consumed), if the file is unchanged."""
    with _WRITTEN_LOCK:
        found = _WRITTEN.pop(os.path.realpath(path), None)
    if found is None:
        return None
    stamp, digest = found
    try:
        return digest if _stamp(path.stat()) == stamp else None
    except OSError:
        return None


def write_manifest(directory: str | os.PathLike) -> Path:
    """Hash every file of ``directory`` and write its manifest atomically; returns its path.

    Files written through a :class:`HashingWriter` and unchanged since are not read again.
    """
    root = Path(directory)
    names = checkpoint_files(root)
    known = {name: _written_digest(root / name) for name in names}
    unknown = [name for name in names if known[name] is None]
    with ThreadPoolExecutor(_workers(len(unknown))) as pool:
        known.update(zip(unknown, pool.map(lambda n: file_digest(root / n), unknown), strict=True))
    digests = [known[name] for name in names]
    files = [
        {"path": name, "size": (root / name).stat().st_size, ALGORITHM: digest}
        for name, digest in zip(names, digests, strict=True)
    ]
    manifest = {"format": FORMAT, "algorithm": ALGORITHM, "files": files}
    target = root / MANIFEST_NAME
    atomic_write_text(target, json.dumps(manifest, indent=1) + "\n", fsync=True)
    return target


def read_manifest(directory: str | os.PathLike) -> tuple[str, list[dict]] | None:
    """(algorithm, file entries) of the manifest, or None when ``directory`` has none."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        algorithm = manifest.get("algorithm")
        if algorithm not in HASHERS:
            raise ValueError(f"unknown algorithm {algorithm!r}")
        for entry in files:
            if not isinstance(entry["path"], str) or not isinstance(entry["size"], int):
                raise ValueError("an entry without a path or size")
            if not isinstance(entry[algorithm], str):
                raise ValueError(f"an entry without its {algorithm}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is not a readable checksum manifest ({err})") from None
    return algorithm, files


def _check_entry(root: Path, algorithm: str, entry: dict) -> str | None:
    name = entry["path"]
    path = root / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        return f"{root / MANIFEST_NAME} lists {name!r}, outside the checkpoint"
    if not path.is_file():
        return f"{path} is missing (listed in {MANIFEST_NAME})"
    size = path.stat().st_size
    if size != entry["size"]:
        return (
            f"{path}: checksum mismatch: {size} bytes, {MANIFEST_NAME} records {entry['size']} "
            f"(a truncated or torn copy?; {SKIP_HINT})"
        )
    if file_digest(path, algorithm) != entry[algorithm]:
        return (
            f"{path}: checksum mismatch: its content differs from what {MANIFEST_NAME} recorded "
            f"when it was saved (a corrupt or torn copy?; {SKIP_HINT})"
        )
    return None


def verify_directory(directory: str | os.PathLike, *, note: bool = True, stream=None) -> bool:
    """Check every file ``directory``'s manifest lists (size, then hash).

    Returns True when all match (checked once per process while the manifest and the files'
    sizes and modification times stay the same), False when there is
    no manifest (with ``note``, one line on ``stream`` -- default stderr -- says so, once per
    directory and process).
    Raises CheckpointError naming the first differing or missing file. Files the manifest does
    not list are not checked.
    """
    root = Path(directory)
    manifest = read_manifest(root)
    key = str(root.resolve())
    if manifest is None:
        if note and key not in _NOTED and os.environ.get("RANK", "0") == "0":
            _NOTED.add(key)
            print(
                f"note: {root} has no {MANIFEST_NAME} (saved before checksums or by another "
                "tool): its content is not verified",
                file=stream or sys.stderr,
                flush=True,
            )
        return False
    algorithm, files = manifest
    stamp = (key, (root / MANIFEST_NAME).read_bytes(), _stats(root, files))
    if stamp in _VERIFIED:
        return True
    with ThreadPoolExecutor(_workers(len(files))) as pool:
        problems = list(pool.map(lambda entry: _check_entry(root, algorithm, entry), files))
    problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        raise CheckpointError(problem)
    _VERIFIED.add(stamp)
    return True


def _stats(root: Path, files: list[dict]) -> tuple:
    """Size and modification time of each listed file (None where it cannot be read)."""
    found = []
    for entry in files:
        try:
            info = (root / entry["path"]).stat()
            found.append((info.st_size, info.st_mtime_ns))
        except OSError:
            found.append(None)
    return tuple(found)
