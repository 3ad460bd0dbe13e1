"""Reading SEDD sample files (JSONL, as written by ``tools/generate_sedd.py``) and reference
texts for sample-quality evaluation. Imports neither torch nor transformers, so the tools read
and check every input before they load a scorer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sedd_megatron.errors import EvalError

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def _lines(path: Path, what: str):
    if not path.exists():
        raise EvalError(f"{what} not found: {path}")
    if not path.is_file():
        raise EvalError(f"{what} is not a regular file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError as err:
        raise EvalError(f"{path}: not valid UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise EvalError(f"cannot read {what} {path}: {err.strerror or err}") from None


def _check_record(record: dict, text_key: str, where: str) -> None:
    if not isinstance(record.get(text_key), str):
        raise EvalError(f"{where}: no string field {text_key!r}")
    tokens = record.get("tokens")
    if tokens is not None and not (
        isinstance(tokens, list)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens)
    ):
        raise EvalError(f"{where}: 'tokens' must be a list of non-negative integer token ids")
    settings = record.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise EvalError(f"{where}: 'settings' must be a JSON object")


def read_samples(path: str | os.PathLike, text_key: str = "text") -> list[dict]:
    """Sample records of a JSONL file (one object per line, with the string ``text_key``;
    optional ``tokens``, a list of token ids, and ``settings``, an object)."""
    path = Path(path)
    records = []
    for lineno, line in _lines(path, "samples file"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise EvalError(f"{path}:{lineno}: no string field {text_key!r} (not a JSON object)")
        _check_record(record, text_key, f"{path}:{lineno}")
        records.append(record)
    if not records:
        raise EvalError(f"no samples in {path}")
    return records


def read_texts(path: str | os.PathLike, text_key: str = "text") -> list[str]:
    """Reference texts: a JSONL file (``text_key``) or a text file (one per non-blank line)."""
    path = Path(path)
    if path.name.lower().endswith(JSON_SUFFIXES):
        return [r[text_key] for r in read_samples(path, text_key)]
    texts = [line.strip() for _, line in _lines(path, "reference file") if line.strip()]
    if not texts:
        raise EvalError(f"no reference texts in {path}")
    return texts


def sample_steps(records: Sequence[dict]) -> int | None:
    """The sampling steps recorded in ``settings.steps`` (None if absent or mixed)."""
    steps = {(r.get("settings") or {}).get("steps") for r in records}
    return steps.pop() if len(steps) == 1 else None
