"""The bad-input table (tests/bad_inputs): every case through the real CLI in a fresh process.

Each case must end with its exit status (never 0), exactly one line on stderr --
``<script>: error: <message>`` matching the case -- no file left behind and nothing executed.
The processes run with the user's environment (no ``PYTHONWARNINGS``), so an import warning on
stderr fails the case. The selected cases run a few at a time when the first one is asked for.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy
import pytest

import tests.bad_inputs as table
from sedd_megatron import checksums
from tests.bad_inputs.cases_training import BASE as TRAINING_BASE
from tests.conftest import CONFORMANCE_DIR
from tests.launch import REPO_ROOT, run_command

PARALLEL = 3  # processes at a time (most cases are import-bound; the machine has 2 cores)


def _load_cases() -> dict[str, table.Case]:
    cases = {}
    for info in sorted(pkgutil.iter_modules(table.__path__), key=lambda i: i.name):
        if not info.name.startswith("cases_"):
            continue
        area = info.name.removeprefix("cases_")
        for case in importlib.import_module(f"tests.bad_inputs.{info.name}").CASES:
            case_id = f"{area}: {case.name}"
            assert case_id not in cases, f"duplicate bad-input case {case_id!r}"
            assert case.rc != 0, f"{case_id}: a bad input must exit non-zero"
            cases[case_id] = case
    return cases


CASES = _load_cases()


def _write_data(prefix: Path) -> None:
    """An indexed dataset of 40 documents with token ids < 1000 (999 ends each document)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = numpy.random.default_rng(0)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.uint16)
    for _ in range(40):
        doc = numpy.append(rng.integers(0, 999, size=int(rng.integers(20, 80))), 999)
        builder.add_document(doc.astype(numpy.uint16), [len(doc)])
    builder.finalize(f"{prefix}.idx")


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input_fixtures")
    megatron = root / "megatron"
    run_command(
        [sys.executable, str(REPO_ROOT / "tools" / "convert_checkpoint.py"), "import",
         "--plain", str(CONFORMANCE_DIR / "tiny_absorb"), "--out", str(megatron)],
        timeout=240,
    )  # fmt: skip
    plain = shutil.copytree(CONFORMANCE_DIR / "tiny_absorb", root / "plain")
    checksums.write_manifest(plain)  # as save_pretrained / export write it
    trained = root / "trained"
    run_command(
        [sys.executable, str(REPO_ROOT / "pretrain_sedd.py"), *TRAINING_BASE, "--mock-data",
         "--train-iters", "2", "--eval-interval", "2", "--save", str(trained),
         "--save-interval", "2"],
        timeout=240,
    )  # fmt: skip
    (root / "data").mkdir()
    _write_data(root / "data" / "tokens")
    text = root / "text.txt"
    text.write_text(
        "The quick brown fox jumps over the lazy dog. " * 40
        + "\nA second paragraph, with other words in it, ends the file.\n"
    )
    return {
        "plain": plain,
        "megatron": megatron,
        "trained": trained,
        "data": root / "data" / "tokens",
        "text": text,
    }


def _user_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment a user's shell would give: ours minus the test-only switches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "SEDD_TRITON"))}
    for name in ("PYTHONWARNINGS", "TRITON_INTERPRET", "PYTHONFAULTHANDLER"):
        env.pop(name, None)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _substitute(text: str, names: dict[str, Path]) -> str:
    for name, path in names.items():
        text = text.replace("{" + name + "}", str(path))
    return text


def _run_case(case_id: str, fixtures: dict[str, Path], workdir: Path) -> dict:
    case = CASES[case_id]
    tmp = workdir / re.sub(r"[^A-Za-z0-9_.-]+", "_", case_id)
    tmp.mkdir()
    names = {**fixtures, "tmp": tmp}
    if case.setup is not None:
        case.setup(tmp, fixtures)
    before = _files(tmp)
    argv = [_substitute(a, names) for a in case.argv]
    env = _user_env({k: _substitute(v, names) for k, v in case.env.items()})
    try:
        done = subprocess.run(
            [sys.executable, *argv],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=case.timeout,
        )
        rc, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as err:
        rc, stdout, stderr = None, err.stdout or "", f"timed out after {case.timeout} s"
    after = _files(tmp)
    left = {
        f
        for f in after - before
        if not any(Path(f).match(g) or f.startswith(g.rstrip("*/")) for g in case.leaves)
    }
    return dict(
        rc=rc,
        stdout=stdout if isinstance(stdout, str) else stdout.decode(errors="replace"),
        stderr=stderr,
        left=sorted(left),
        pwned=sorted(str(p) for p in tmp.rglob("PWNED")),
        argv=argv,
        tmp=tmp,
    )


class _Runner:
    """Starts the selected cases on first use, a few at a time, in table order; each test then
    waits only for its own case (so no single test waits for the whole table)."""

    def __init__(self, selected: list[str], fixtures: dict[str, Path], workdir: Path):
        self._lock = threading.Lock()
        self._selected, self._fixtures, self._workdir = selected, fixtures, workdir
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict = {}

    def result(self, case_id: str) -> dict:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PARALLEL)
                for c in self._selected:
                    self._futures[c] = self._pool.submit(
                        _run_case, c, self._fixtures, self._workdir
                    )
        return self._futures[case_id].result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


@pytest.fixture(scope="session")
def runner(request, fixtures, tmp_path_factory):
    here = Path(__file__).resolve()
    selected = [
        item.callspec.params["case_id"]
        for item in request.session.items
        if Path(str(item.fspath)).resolve() == here and hasattr(item, "callspec")
    ]
    runner = _Runner(selected, fixtures, tmp_path_factory.mktemp("bad_inputs"))
    yield runner
    runner.close()


def test_the_table_is_large():
    assert len(CASES) >= 60, f"the bad-input table has {len(CASES)} cases, want >= 60"
    scripts = {Path(c.argv[0]).name for c in CASES.values()}
    entry_points = {"pretrain_sedd.py"} | {p.name for p in (REPO_ROOT / "tools").glob("*.py")}
    assert entry_points <= scripts, f"entry points without a case: {entry_points - scripts}"


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input(runner, case_id):
    case = CASES[case_id]
    got = runner.result(case_id)
    context = f"\n$ python {' '.join(got['argv'])}\n--- stderr\n{got['stderr']}\n--- stdout\n"
    context += got["stdout"][-2000:]
    assert not got["pwned"], f"a crafted file ran code: {got['pwned']}{context}"
    assert got["rc"] == case.rc, f"exit status {got['rc']}, want {case.rc}{context}"
    lines = [line for line in got["stderr"].splitlines() if line.strip()]
    assert len(lines) == 1, f"want exactly one line on stderr, got {len(lines)}{context}"
    script = Path(case.argv[0]).name
    assert lines[0].startswith(f"{script}: error: "), f"not '{script}: error: ...'{context}"
    assert re.search(case.error, lines[0]), f"error does not match {case.error!r}{context}"
    assert not got["left"], f"files left behind: {got['left']}{context}"
    shutil.rmtree(got["tmp"], ignore_errors=True)
