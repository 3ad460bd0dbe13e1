"""The bad-input table: every entry point given bad input, run as a real CLI in a fresh process.

Each ``cases_*.py`` module of this package defines ``CASES``, a list of :class:`Case`;
``tests/test_bad_inputs.py`` runs them all (a few at a time, in fresh processes) and checks, for
each case:

- the exit status is ``case.rc`` (2 unless said otherwise; never 0);
- stderr holds exactly one non-blank line, ``<script name>: error: ...``, matching
  ``case.error`` (a regular expression, searched);
- the case's directory holds exactly what ``setup`` left there (nothing half-written), unless
  ``case.leaves`` names what may stay;
- no file named ``PWNED`` appears anywhere in the case's directory (crafted pickles try to
  create one).

``argv`` is the command after ``python``: the script (relative to the repository root), then its
arguments. In ``argv`` (and ``env`` values), ``{tmp}`` is the case's own empty directory and
``{name}`` a shared read-only fixture of :data:`FIXTURES` (copy it in ``setup`` before changing
it). ``setup(tmp, fixtures)`` builds files in ``tmp``; ``fixtures`` maps the fixture names to
paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: Shared fixtures, built once per session by tests/test_bad_inputs.py:
#:   plain       a copy of tests/data/conformance/tiny_absorb (published layout: config.json +
#:               safetensors) with its checksum manifest, as save_pretrained writes it
#:   megatron    that model imported as a pretrain_sedd.py ``torch_dist`` checkpoint at TP=1/PP=1
#:               (``--save`` directory: latest_checkpointed_iteration.txt + release/ ...)
#:   trained     a pretrain_sedd.py ``--save`` directory after 2 iterations of the model of
#:               cases_training.BASE on mock data (iter_0000002/ with optimizer state)
#:   data        prefix of a small indexed dataset (token ids < 1000, NullTokenizer style) for
#:               pretrain/eval: ``{data}.bin`` and ``{data}.idx``
#:   text        a small UTF-8 text file (a few KB of English)
FIXTURES = ("plain", "megatron", "trained", "data", "text")


@dataclass(frozen=True)
class Case:
    name: str  # unique across the table, e.g. "generate: --num-samples 0"
    argv: tuple[str, ...]
    error: str  # regex searched in the single stderr line
    setup: Callable[[Path, dict[str, Path]], None] | None = None
    rc: int = 2
    env: dict[str, str] = field(default_factory=dict)
    leaves: tuple[str, ...] = ()  # glob patterns (relative to tmp) allowed to appear
    timeout: float = 240.0


def write(name: str, data: str | bytes):
    """A ``setup`` that writes ``data`` (text as UTF-8, or bytes) to ``tmp/name``."""

    def setup(tmp: Path, fixtures: dict[str, Path]) -> None:
        if isinstance(data, bytes):
            (tmp / name).write_bytes(data)
        else:
            (tmp / name).write_text(data, encoding="utf-8")

    return setup


def make_dir(name: str):
    """A ``setup`` that makes the directory ``tmp/name``."""

    def setup(tmp: Path, fixtures: dict[str, Path]) -> None:
        (tmp / name).mkdir()

    return setup
