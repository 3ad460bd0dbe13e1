"""Finding and reading the two kinds of SEDD checkpoint directory (no Megatron model needed).

- a pretrain_sedd.py (Megatron torch_dist) checkpoint: ``latest_checkpointed_iteration.txt``
  naming ``iter_NNNNNNN/`` (or ``release/``); a complete iteration directory holds
  ``metadata.json`` and ``.metadata``. Nothing in it is unpickled beyond plain data
  (``safety``): ``.metadata`` with a restricted unpickler, every shard it lists checked for
  presence and length first, the common state (with the training ``args``) ``weights_only``;
- a plain directory in the published ``louaaron/sedd-*`` layout: ``config.json`` and
  ``model.safetensors`` or ``pytorch_model.bin`` (read only with ``weights_only=True``).
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from sedd_megatron import checksums
from sedd_megatron.checkpoint import safety
from sedd_megatron.errors import CheckpointError, ConfigError
from sedd_megatron.plain.checkpoint import (
    CONFIG_NAME,
    check_finite,
    find_weights_file,
    read_state_dict,
)
from sedd_megatron.plain.config import SEDDConfig
from sedd_megatron.plain.layout import check_state_dict

TRACKER_NAME = "latest_checkpointed_iteration.txt"
_ITER_DIR = re.compile(r"^iter_(\d{7})$")


@dataclass(frozen=True)
class CheckpointIteration:
    """One saved iteration of a Megatron checkpoint directory."""

    path: Path  # the iteration directory (iter_NNNNNNN or release)
    iteration: int  # 0 for a release checkpoint
    release: bool = False


def is_plain_dir(source: str | Path) -> bool:
    """Whether ``source`` is a directory in the published layout (it has config.json).

    The one test of "is this a plain model directory?" the package uses."""
    path = Path(source)
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def source_kind(source: str | Path) -> str:
    """``"plain"`` (has config.json) or ``"megatron"`` (a checkpoint directory); else an error."""
    path = Path(source)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if is_plain_dir(path):
        return "plain"
    if (path / TRACKER_NAME).exists() or _iteration_dirs(path) or _is_iteration_dir(path):
        return "megatron"
    if not any(path.iterdir()):
        raise CheckpointError(f"{path} is empty: not a SEDD checkpoint")
    raise CheckpointError(
        f"{path} is neither a plain SEDD checkpoint (no {CONFIG_NAME}) nor a pretrain_sedd.py "
        f"checkpoint (no {TRACKER_NAME} or iter_NNNNNNN directories)"
    )


def find_iteration(ckpt_dir: str | Path, iteration: int | None = None) -> CheckpointIteration:
    """The iteration to read: ``iteration`` if given, else the one the tracker file names.

    ``ckpt_dir`` may also be an iteration directory itself. Raises CheckpointError for a missing
    or empty directory, an unreadable tracker, or an incomplete (interrupted) iteration.
    """
    path = Path(ckpt_dir)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if _is_iteration_dir(path):
        found = _ITER_DIR.match(path.name)
        number = int(found.group(1)) if found else 0
        if iteration is not None and iteration != number:
            raise CheckpointError(f"{path} is iteration {number}, not {iteration}")
        return _complete(CheckpointIteration(path, number, release=found is None), path.parent)
    if iteration is not None:
        return _complete(CheckpointIteration(path / f"iter_{iteration:07d}", iteration), path)
    tracker = path / TRACKER_NAME
    if not tracker.is_file():
        if not any(path.iterdir()):
            raise CheckpointError(f"{path} is empty: no checkpoint was saved there")
        raise CheckpointError(
            f"{path} has no {TRACKER_NAME} (no completed save){_available(path)}; "
            "pass an iteration explicitly"
        )
    text = tracker.read_text().strip()
    if text == "release":
        return _complete(CheckpointIteration(path / "release", 0, release=True), path)
    if not text.isdigit():
        raise CheckpointError(f"{tracker} does not name an iteration (it holds {text!r})")
    number = int(text)
    return _complete(CheckpointIteration(path / f"iter_{number:07d}", number), path)


def verify_checksums(source: str | Path, iteration: int | None = None) -> bool:
    """Check the checksum manifest of what ``source`` would load: a plain directory, or the
    iteration :func:`find_iteration` picks. False when there is none (a note says so);
    CheckpointError naming the first differing file."""
    if is_plain_dir(source):
        return checksums.verify_directory(source)
    return checksums.verify_directory(find_iteration(source, iteration).path)


def read_checkpoint_args(ckpt_dir: str | Path, iteration: int | None = None):
    """The Megatron ``args`` (argparse.Namespace) saved by pretrain_sedd.py with the iteration."""
    return read_common_state(find_iteration(ckpt_dir, iteration))["args"]


def read_common_state(where: CheckpointIteration) -> dict:
    """The common (non-sharded) state of a torch_dist iteration, after :func:`check_iteration`."""
    from megatron.core import dist_checkpointing

    check_iteration(where)
    try:
        with safe_megatron_reads(where.path):
            common = dist_checkpointing.load_common_state_dict(str(where.path))
    except CheckpointError:
        raise
    except Exception as err:  # Megatron raises several types for unreadable checkpoints
        raise CheckpointError(
            f"cannot read the common state of {where.path}: {safety.one_line(err)}"
        ) from err
    args = common.get("args") if isinstance(common, dict) else None
    if args is None or not hasattr(args, "sedd_graph"):
        raise CheckpointError(f"{where.path} was not saved by pretrain_sedd.py (no SEDD args)")
    return common


def check_iteration(where: CheckpointIteration):
    """Read the iteration's ``.metadata`` safely and check that every shard it lists exists
    and is long enough; returns the metadata (CheckpointError naming the file otherwise)."""
    return safety.check_dcp_dir(where.path)


@contextmanager
def safe_megatron_reads(path: Path) -> Iterator[None]:
    """Megatron's reading of the checkpoint ``path`` with the ``safe_checkpoint_reads`` upstream
    fix applied, every ``torch.load`` weights-only (see ``safety``) and torch's
    CheckpointException (a BaseException) turned into a CheckpointError."""
    from sedd_megatron.runtime.upstream_fixes import (  # lazy: the runtime imports torch
        apply_upstream_fixes,
    )

    apply_upstream_fixes(["safe_checkpoint_reads"])
    with safety.dcp_errors_as_checkpoint_errors(path), safety.weights_only_loads():
        yield


def saved_tensor_keys(where: CheckpointIteration) -> set[str]:
    """Keys of the tensors stored in a torch_dist iteration (read safely from its .metadata)."""
    return set(safety.read_metadata(where.path).state_dict_metadata)


def has_ema_weights(where: CheckpointIteration) -> bool:
    return any(key.startswith("ema.") for key in saved_tensor_keys(where))


def read_plain_checkpoint(
    directory: str | Path, *, verify_checksums: bool = True
) -> tuple[SEDDConfig, dict[str, torch.Tensor]]:
    """Config and validated float32 reference state dict of a published-layout directory
    (its checksum manifest, if any, checked first unless ``verify_checksums`` is False)."""
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path} has no {CONFIG_NAME}")
    if verify_checksums:
        checksums.verify_directory(path)
    try:
        config = SEDDConfig.from_json(path / CONFIG_NAME)
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    weights = find_weights_file(path)
    state_dict = read_state_dict(weights)
    try:
        check_state_dict(state_dict, config)
    except CheckpointError as err:
        raise CheckpointError(f"{weights} vs {CONFIG_NAME}: {err}") from err
    check_finite(state_dict, weights)
    return config, {k: v.to(torch.float32).contiguous() for k, v in state_dict.items()}


def _is_iteration_dir(path: Path) -> bool:
    named = _ITER_DIR.match(path.name) is not None or path.name == "release"
    return named and (path / "metadata.json").is_file()


def _iteration_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _ITER_DIR.match(p.name))


def _available(path: Path) -> str:
    done = [p.name for p in _iteration_dirs(path) if _is_complete(p)]
    return f" (complete iterations: {', '.join(done)})" if done else ""


def _is_complete(path: Path) -> bool:
    return (path / "metadata.json").is_file() and (path / ".metadata").is_file()


def _complete(where: CheckpointIteration, ckpt_dir: Path) -> CheckpointIteration:
    if not where.path.is_dir():
        raise CheckpointError(f"{ckpt_dir} has no {where.path.name}{_available(ckpt_dir)}")
    if not _is_complete(where.path):
        missing = [n for n in ("metadata.json", ".metadata") if not (where.path / n).is_file()]
        raise CheckpointError(
            f"{where.path} is incomplete (no {' or '.join(missing)}: an interrupted "
            f"save?){_available(ckpt_dir)}"
        )
    return where
