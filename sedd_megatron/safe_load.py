"""Reading checkpoints without running code from them, and checking them before a load.

The one home of safe loading (docs/architecture.md §1, base floor: torch and ``errors`` only), so
that ``plain``, ``runtime`` and ``checkpoint`` use one copy; ``sedd_megatron.checkpoint.safety``
re-exports it.

A checkpoint directory is untrusted input: anyone who can hand over a directory must not be able
to run code in the process that loads it. What an iteration directory holds, and how it is read:

- ``.metadata`` (torch_dist / torch DCP) is a pickle that torch's ``FileSystemReader`` reads
  with plain ``pickle.load``, which can call any Python function. :func:`read_metadata` uses
  :class:`MetadataUnpickler`, which resolves only the classes such metadata is made of
  (:data:`METADATA_GLOBALS`: torch.distributed.checkpoint's metadata, planner and storage
  records, ``torch.Size``, torch dtypes and layouts, ``OrderedDict``) and refuses anything else
  with a :class:`CheckpointError` naming the file and the refused global. The upstream fix
  ``safe_checkpoint_reads`` (``sedd_megatron.runtime.upstream_fixes``) makes
  ``FileSystemReader.read_metadata`` itself use it, so Megatron's own loading is covered.
- ``__R_I.distcp`` shards hold tensors (torch reads them with ``weights_only=True``) and pickled
  objects (Megatron's common state with the training args, RNG and rerun state, extra state),
  which torch's ``DefaultLoadPlanner.load_bytes`` unpickles with ``weights_only=False``; the same
  fix makes that ``weights_only=True`` (Megatron registers its few extra safe classes).
- ``common.pt`` (older torch_dist) and ``mp_rank_*/model_optim_rng.pt`` (``--ckpt-format
  torch``) are read only with ``weights_only=True`` (:func:`load_weights_only`;
  :func:`weights_only_loads` forces it on Megatron's own ``torch.load`` calls, whatever
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says).
- :func:`check_storage` checks, before any tensor is read, that every shard file the metadata
  lists exists and is long enough (a clear error instead of an EOFError deep in torch), and
  that no entry points outside the iteration directory.
- :func:`check_load_dir` is the preflight of a ``pretrain_sedd.py --load`` directory: tracker
  file, iteration directory, format, metadata and shards (or the legacy files), all checked
  with one clear CheckpointError for the first problem.
"""

from __future__ import annotations

import _compat_pickle
import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import torch
from torch import _weights_only_unpickler

from sedd_megatron.errors import CheckpointError

TRACKER_NAME = "latest_checkpointed_iteration.txt"
METADATA_NAME = ".metadata"
COMMON_NAME = "common.pt"
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_ITERATION = re.compile(r"\d+", re.ASCII)

#: The globals a torch_dist ``.metadata`` pickle may name (module -> names); torch dtypes
#: (``torch.float32`` ...) are allowed on top, see :func:`allowed_global`.
METADATA_GLOBALS: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset(
        {
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        }
    ),
    "torch.distributed.checkpoint.planner": frozenset(
        {"SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "BytesIOWriteData"}
    ),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo", "_StoragePrefix"}),
    "torch": frozenset({"Size"}),
    "torch.serialization": frozenset({"_get_layout"}),  # torch.strided etc. by name
    "collections": frozenset({"OrderedDict"}),
    "builtins": frozenset({"set", "frozenset"}),
}


def allowed_global(module: str, name: str) -> bool:
    """Whether a ``.metadata`` pickle may name ``module.name``."""
    if name in METADATA_GLOBALS.get(module, ()):
        return True
    return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowlist (``.name`` is ``module.name``)."""

    def __init__(self, name: str):
        super().__init__(f"refused global {name}")
        self.name = name


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles torch_dist metadata; any other global raises :class:`RefusedGlobal`."""

    def find_class(self, module: str, name: str):
        if not allowed_global(module, name):
            raise RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise RefusedGlobal(f"persistent id {str(pid)[:60]!r}")


def unpickle_metadata(stream, path: str | os.PathLike):
    """Unpickle the torch_dist metadata in ``stream`` (read from ``path``, named in errors)."""
    try:
        return MetadataUnpickler(stream).load()
    except RefusedGlobal as err:
        raise CheckpointError(
            f"refusing to load {path}: it needs the Python global {err.name}, which torch_dist "
            "checkpoint metadata never holds (unpickling it could run arbitrary code)"
        ) from None
    except Exception as err:  # a corrupt pickle raises many kinds of error
        raise CheckpointError(
            f"{path} is not readable torch_dist metadata (truncated or corrupt: {one_line(err)})"
        ) from None


def read_metadata(directory: str | os.PathLike, rank: int | None = None):
    """The ``Metadata`` of a torch_dist iteration directory, unpickled safely (see above).

    ``rank`` reads the rank-local ``__<rank>.metadata`` instead, as torch's reader does."""
    from torch.distributed.checkpoint.metadata import Metadata

    name = METADATA_NAME if rank is None else f"__{rank}{METADATA_NAME}"
    path = Path(directory) / name
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: {Path(directory)} is not a complete torch_dist checkpoint "
            "(an interrupted save?)"
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty: the checkpoint's metadata was not written")
    with open(path, "rb") as stream:
        metadata = unpickle_metadata(stream, path)
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise CheckpointError(f"{path} does not hold torch_dist checkpoint metadata")
    return metadata


def check_storage(directory: str | os.PathLike, metadata) -> None:
    """Every shard file ``metadata`` lists exists in ``directory`` and is long enough."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    directory = Path(directory)
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        if not isinstance(info, _StorageInfo):
            raise CheckpointError(f"{directory / METADATA_NAME} has a malformed storage entry")
        relative = info.relative_path
        parts = PurePosixPath(relative).parts if isinstance(relative, str) else ()
        bad_numbers = not all(isinstance(v, int) and v >= 0 for v in (info.offset, info.length))
        if not parts or relative.startswith("/") or ".." in parts or "\\" in relative:
            raise CheckpointError(
                f"{directory / METADATA_NAME} names the shard {relative!r}, outside the "
                "checkpoint directory"
            )
        if bad_numbers:
            raise CheckpointError(f"{directory / METADATA_NAME} has a malformed storage entry")
        needed[relative] = max(needed.get(relative, 0), info.offset + info.length)
    for relative in sorted(needed):
        shard = directory / relative
        if not shard.is_file():
            raise CheckpointError(
                f"{shard} is missing: {directory} is incomplete (its metadata lists that shard)"
            )
        size = shard.stat().st_size
        if size < needed[relative]:
            raise CheckpointError(
                f"{shard} is truncated: {size} bytes, but the checkpoint's metadata needs "
                f"{needed[relative]}"
            )


def check_byte_items(directory: str | os.PathLike, metadata) -> None:
    """Every pickled object stored in the shards (Megatron's common state, RNG and rerun state,
    extra state; small) loads with ``weights_only=True``: a crafted one is refused here, with
    its name, before Megatron reads it."""
    import megatron.core  # noqa: F401  (registers Megatron's few weights-only safe classes)
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    directory = Path(directory)
    kinds = metadata.state_dict_metadata
    for index, info in metadata.storage_data.items():
        if not isinstance(kinds.get(getattr(index, "fqn", None)), BytesStorageMetadata):
            continue
        with open(directory / info.relative_path, "rb") as stream:
            stream.seek(info.offset)
            data = io.BytesIO(stream.read(info.length))
        try:
            torch.load(data, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt zip/pickle data raises several kinds of error
            file = directory / info.relative_path
            refused, detail = weights_only_failure(err, data)
            if refused:
                message = f"refusing to load {file}: its item {index.fqn} "
                message += detail.removeprefix("it ")
            else:
                message = f"{file}: the item {index.fqn} is corrupt ({detail})"
            raise CheckpointError(message) from None


def check_dcp_dir(directory: str | os.PathLike):
    """Read (safely) and check a torch_dist iteration directory; returns its ``Metadata``:
    :func:`read_metadata`, :func:`check_storage`, :func:`check_byte_items` and ``common.pt``
    (if any) weights-only."""
    metadata = read_metadata(directory)
    check_storage(directory, metadata)
    check_byte_items(directory, metadata)
    common = Path(directory) / COMMON_NAME
    if common.is_file():  # older torch_dist checkpoints keep the common state there
        load_weights_only(common)
    return metadata


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block every ``torch.load`` is ``weights_only=True``, even one that asks for
    ``weights_only=False`` (torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD), and a user's
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is ignored. For Megatron's loading code, which we do not
    control; the environment is restored afterwards."""
    saved = {name: os.environ.get(name) for name in (_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY)}
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(_FORCE_NO_WEIGHTS_ONLY, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def dcp_errors_as_checkpoint_errors(path: str | os.PathLike) -> Iterator[None]:
    """torch.distributed.checkpoint's ``CheckpointException`` (a BaseException, not an
    Exception, listing every rank's error with its traceback) as one CheckpointError: the
    first rank's own CheckpointError if it raised one, else its error's first line."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as err:
        causes = [f[0] if isinstance(f, tuple) else f for f in err.failures.values()]
        for cause in causes:
            if isinstance(cause, CheckpointError):
                raise CheckpointError(str(cause)) from None
        detail = one_line(causes[0]) if causes else "unknown error"
        raise CheckpointError(f"cannot read the checkpoint {path}: {detail}") from None


def load_weights_only(path: str | os.PathLike, *, mmap: bool = False):
    """``torch.load(path, weights_only=True)`` on the CPU, with one clear CheckpointError for a
    file that needs more than weights-only unpickling or is not a readable PyTorch file.

    ``mmap`` maps the tensors instead of reading them (zip-format files; others are read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty: not a PyTorch checkpoint")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as err:
            if not mmap or "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt zip/pickle data raises several kinds of error
        refused, detail = weights_only_failure(err, path)
        if refused:
            raise CheckpointError(f"refusing to load {path}: {detail}") from None
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {detail})"
        ) from None


def weights_only_failure(err: BaseException, data) -> tuple[bool, str]:
    """Why ``torch.load(data, weights_only=True)`` failed with ``err``: (True, the refusal's
    reason) when the data needs more than weights-only unpickling, else (False, the error in
    one line: the data is corrupt).

    Classified by what failed, not by torch's wording: torch refuses with a
    ``pickle.UnpicklingError``, and only then is ``data`` (a path, bytes or a binary stream)
    unpickled again by :class:`RefusalRecorder`, which builds nothing: a refused global is named,
    a pickle that does not parse is corrupt."""
    if not isinstance(err, pickle.UnpicklingError):
        return False, one_line(err)
    verdict, detail = scan_pickle(data)
    if verdict == "refused":
        return True, (
            f"it needs the Python global {detail}, which only full unpickling can build, and "
            "full unpickling can run arbitrary code"
        )
    if verdict == "corrupt":
        return False, detail
    return True, weights_only_reason(err)


def weights_only_reason(err: BaseException) -> str:
    """torch's reason for a weights-only refusal of a pickle that names no refused global (an
    operation torch's unpickler does not allow), in one line; for display only."""
    lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    detail = lines[0] if lines else "unsupported pickle content"
    return f"it needs more than weights-only unpickling ({detail[:200]})"


class _Inert:
    """What :class:`RefusalRecorder` builds for every allowed global and persistent id: a
    stand-in that takes any arguments, state and items and does nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def add(self, item):
        pass


def weights_only_globals() -> frozenset[str]:
    """The ``module.name`` globals torch's weights-only unpickler accepts now (its defaults and
    those added with ``torch.serialization.add_safe_globals``)."""
    names = set(_weights_only_unpickler._get_allowed_globals())
    names |= set(_weights_only_unpickler._get_user_allowed_globals())
    return frozenset(names)


class RefusalRecorder(pickle.Unpickler):
    """Runs a pickle without building anything: a global torch's weights-only loading accepts
    (:func:`weights_only_globals`) and every persistent id become :class:`_Inert`; any other
    global raises :class:`RefusedGlobal` with its name (a builtin by its bare name, as Python
    writes it: ``getattr``)."""

    def __init__(self, stream, allowed: frozenset[str]):
        super().__init__(stream)
        self._allowed = allowed

    def find_class(self, module: str, name: str):
        # protocol 2 pickles name Python 2's modules (``__builtin__.getattr``): as pickle maps them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if f"{module}.{name}" not in self._allowed:
            raise RefusedGlobal(name if module == "builtins" else f"{module}.{name}")
        return _Inert

    def persistent_load(self, pid):
        return _Inert()


def scan_pickle(data) -> tuple[str, str]:
    """Run the pickle(s) of a ``torch.save`` file through :class:`RefusalRecorder`:
    ("refused", the global) when one needs full unpickling, ("corrupt", why) when the data
    does not parse, else ("clean", "").

    ``data``: a path, bytes or a binary stream (read from its start). A zip file's
    ``data.pkl`` is scanned; a legacy file's four pickles (magic number, protocol, system
    information, object) in turn."""
    try:
        if isinstance(data, (str, os.PathLike)):
            raw = Path(data).read_bytes()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        else:
            data.seek(0)
            raw = data.read()
    except (OSError, ValueError) as err:
        return "corrupt", one_line(err)
    allowed = weights_only_globals()
    stream = io.BytesIO(raw)
    try:
        is_zip = zipfile.is_zipfile(stream)  # moves the stream's position
        stream.seek(0)
        if is_zip:
            with zipfile.ZipFile(stream) as archive:
                names = [n for n in archive.namelist() if n.split("/")[-1] == "data.pkl"]
                if not names:
                    return "corrupt", "a zip file without data.pkl"
                pickles = [io.BytesIO(archive.read(names[0]))]
            count = 1
        else:
            pickles, count = [stream], 4
        for _ in range(count):
            RefusalRecorder(pickles[0], allowed).load()
    except RefusedGlobal as err:
        return "refused", err.name
    except Exception as err:  # a corrupt pickle or zip raises many kinds of error
        return "corrupt", one_line(err)
    return "clean", ""


def parse_tracker(tracker: str | os.PathLike) -> tuple[int, bool]:
    """(iteration, release) from a ``latest_checkpointed_iteration.txt``, strictly: a
    non-negative number or ``release`` (Megatron prints an error and exits 0 on anything
    else)."""
    tracker = Path(tracker)
    try:
        text = tracker.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read {tracker}: {one_line(err)}") from None
    if not text:
        raise CheckpointError(
            f"{tracker} is empty: it should name the latest iteration (a number or 'release')"
        )
    if text == "release":
        return 0, True
    if not _ITERATION.fullmatch(text):
        raise CheckpointError(
            f"{tracker} does not name an iteration (it holds {text[:40]!r}; expected a number "
            "or 'release')"
        )
    return int(text), False


def load_folder(load_dir: str | os.PathLike, iteration: int | None = None) -> Path | None:
    """The iteration directory Megatron would load from ``load_dir`` (it may not exist), or
    None when there is nothing to load (no tracker file and no ``iteration``). ``iteration``
    (``--ckpt-step``) overrides the tracker's, as in Megatron; an unreadable tracker is a
    CheckpointError (:func:`parse_tracker`)."""
    load = Path(load_dir)
    tracker = load / TRACKER_NAME
    release = False
    if tracker.is_file():
        number, release = parse_tracker(tracker)
    elif iteration is None:
        return None
    if iteration is not None:
        number = iteration
    return load / ("release" if release else f"iter_{number:07d}")


def check_load_dir(load_dir: str | os.PathLike, iteration: int | None = None) -> Path | None:
    """Preflight of a Megatron ``--load`` directory; returns the iteration directory Megatron
    will read, or None when there is nothing to load (no tracker file and no ``iteration``:
    Megatron then starts from scratch, the usual ``--load`` = ``--save`` pattern).

    ``iteration`` (``--ckpt-step``) overrides the tracker's iteration, as in Megatron. Raises
    CheckpointError for an unreadable tracker, a missing iteration directory, unsafe or corrupt
    metadata, missing or truncated shards and unreadable legacy (``--ckpt-format torch``) files.
    """
    folder = load_folder(load_dir, iteration)
    if folder is None:
        return None
    tracker = Path(load_dir) / TRACKER_NAME
    if not folder.is_dir():
        named = f"--ckpt-step {iteration} names" if iteration is not None else f"{tracker} names"
        raise CheckpointError(f"{named} {folder.name}, but {folder} does not exist")
    check_iteration_dir(folder)
    return folder


def check_iteration_dir(folder: str | os.PathLike) -> None:
    """Check one iteration directory in whichever format Megatron would detect there."""
    folder = Path(folder)
    config = folder / "metadata.json"
    if config.is_file():
        try:
            backend = json.loads(config.read_text()).get("sharded_backend")
        except (OSError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{config} is not readable JSON ({one_line(err)})") from None
        if backend not in ("torch_dist", None):
            raise CheckpointError(
                f"{config} names the sharded backend {backend!r}; only torch_dist is supported"
            )
        check_dcp_dir(folder)
        return
    legacy = sorted(folder.glob("mp_rank_*/*.pt"))
    if legacy or any(folder.glob("mp_rank_*")):
        if not legacy:
            raise CheckpointError(f"{folder} has mp_rank_* directories but no .pt files in them")
        for path in legacy:
            load_weights_only(path, mmap=True)
        return
    if (folder / METADATA_NAME).is_file():  # a torch DCP checkpoint without Megatron's json
        check_dcp_dir(folder)
        return
    raise CheckpointError(
        f"{folder} holds no checkpoint Megatron can read (no metadata.json, .metadata or "
        "mp_rank_* files: an interrupted save?)"
    )


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), shortened."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    if len(text) > 160 and ". " in text:  # torch's long messages: their first sentence
        text = text.split(". ")[0]
    return text if len(text) <= 300 else text[:297] + "..."
