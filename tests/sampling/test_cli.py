"""tools/generate_sedd.py end to end on a conformance plain directory, and sample_texts."""

import importlib.util
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

from sedd_megatron.sampling import sample_texts
from tests.conftest import CONFORMANCE_DIR
from tests.launch import REPO_ROOT, run_command, run_torchrun, worker_env

TOOL = REPO_ROOT / "tools" / "generate_sedd.py"
MODEL = CONFORMANCE_DIR / "tiny_absorb"


def generate(*args):
    """The CLI in a fresh process."""
    return run_command([sys.executable, str(TOOL), "--load", str(MODEL), *args], 120)


def cli_main(*args, model=MODEL) -> int:
    """The CLI's main() in this process (plain backend: no Megatron state is created)."""
    spec = importlib.util.spec_from_file_location("generate_sedd", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--load", str(model), *args])


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_cli_writes_records(tmp_path, capsys, umask_027):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"template": "1 2 [MASK:3] 4", "suffix": "9", "id": "a"}\n{}\n')
    out = tmp_path / "out" / "samples.jsonl"
    out.parent.mkdir()
    args = ["--no-detokenize", "--prompts", str(prompts), "--num-samples", "2", "--steps", "4"]
    generate(*args, "--batch-size", "3", "--seed", "5", "--output", str(out), "--no-progress")
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # the user's umask (027), not 0600
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sample_index"] for r in records] == [0, 1, 2, 3]
    first = records[0]
    assert first["prompt"] == {"template": "1 2 [MASK:3] 4", "suffix": "9", "id": "a"}
    assert first["tokens"][:2] == [1, 2] and first["tokens"][5] == 4 and first["tokens"][-1] == 9
    assert len(first["tokens"]) == 32 and first["text"] is None and first["seed"] == 5
    assert first["settings"]["predictor"] == "analytic" and first["settings"]["steps"] == 4
    assert list(out.parent.iterdir()) == [out]  # no temporary or .partial file left

    # the same seed and sample index give the same sample with another batch size
    assert cli_main(*args, "--batch-size", "1", "--seed", "5", "--no-progress") == 0
    alone = capsys.readouterr().out
    assert [json.loads(line)["tokens"] for line in alone.splitlines()] == [
        r["tokens"] for r in records
    ]


def test_cli_text_and_bad_prompt(capsys):
    assert cli_main("--steps", "2", "--prefix", "The", "--seq-length", "8", "--no-progress") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tokens"][0] == 464 and record["text"].startswith("The")
    assert len(record["tokens"]) == 8
    assert cli_main("--template", "a [MASK:0]") == 2
    message = "error: hole '[MASK:0]' at character 2 of the template has length 0"
    assert message in capsys.readouterr().err
    assert cli_main("--prompts", "x.jsonl", "--prefix", "a") == 2
    assert "--prompts cannot be combined" in capsys.readouterr().err


INTERRUPTED_ARGS = ["--no-detokenize", "--prefix", "5 6", "--steps", "2", "--seed", "3"]


def _start(*args) -> subprocess.Popen:
    """The CLI in a fresh process that turns SIGINT into KeyboardInterrupt (as in a terminal,
    even when this test runs with SIGINT ignored)."""
    return subprocess.Popen(
        [sys.executable, str(TOOL), "--load", str(MODEL), *INTERRUPTED_ARGS, *args],
        cwd=REPO_ROOT,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _interrupt(proc: subprocess.Popen, ready) -> tuple[str, str]:
    """Wait until ``ready()`` (at most 120 s), send SIGINT, return (stdout, stderr less the
    checksum note)."""
    deadline = time.monotonic() + 120
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no records before the run ended or timed out: {proc.communicate()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return stdout, without_checksum_note(stderr)


def without_checksum_note(stderr: str) -> str:
    """``stderr`` less the one note that MODEL (published layout) has no checksum manifest."""
    note = f"note: {MODEL} has no sedd_checksums.json"
    lines = stderr.splitlines(keepends=True)
    assert sum(line.startswith(note) for line in lines) == 1, stderr
    return "".join(line for line in lines if not line.startswith(note))


def _uninterrupted(count: int, capsys) -> list[dict]:
    """The first ``count`` samples of the same run, drawn in this process without interrupt
    (one prompt: sample k of the long run is sample k here)."""
    assert cli_main(*INTERRUPTED_ARGS, "--num-samples", str(count), "--no-progress") == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_cli_interrupt_keeps_the_finished_samples(tmp_path, capsys):
    """Ctrl-C during a long run: exit 130, one line naming how many samples were kept where,
    and <output>.partial holds exactly those samples, equal to an uninterrupted run's."""
    out = tmp_path / "samples.jsonl"
    partial = tmp_path / "samples.jsonl.partial"
    out.write_text("previous\n")  # left alone by the interrupted run
    flags = ["--num-samples", "100000", "--batch-size", "2", "--no-progress"]
    proc = _start(*flags, "--output", str(out))
    stdout, stderr = _interrupt(proc, lambda: _lines(partial) >= 4)
    assert proc.returncode == 130, stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    found = re.fullmatch(
        r"generate_sedd\.py: interrupted: kept the (\d+) finished samples in (.+)", lines[-1]
    )
    assert len(lines) == 1 and found, stderr
    assert found.group(2) == str(partial)
    kept = [json.loads(line) for line in partial.read_text().splitlines()]  # valid JSONL
    assert len(kept) == int(found.group(1)) >= 4 and len(kept) % 2 == 0  # whole batches
    assert [r["sample_index"] for r in kept] == list(range(len(kept)))
    assert kept == _uninterrupted(len(kept), capsys)
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, partial.name]


def test_cli_streams_records_to_stdout(capsys):
    """Without --output, records reach stdout as their batches finish; Ctrl-C keeps them."""
    proc = _start("--num-samples", "100000", "--batch-size", "1", "--no-progress")
    first = proc.stdout.readline()  # blocks until the first batch is written
    stdout, stderr = _interrupt(proc, lambda: True)
    assert proc.returncode == 130, stderr
    records = [json.loads(line) for line in (first + stdout).splitlines()]
    found = re.fullmatch(
        r"generate_sedd\.py: interrupted: (\d+) finished samples were written to stdout",
        stderr.strip(),
    )
    assert found and int(found.group(1)) == len(records) >= 1, stderr
    assert records == _uninterrupted(len(records), capsys)


def test_sample_texts_in_process():
    texts = sample_texts(MODEL, num=2, steps=3, seed=1)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    infilled = sample_texts(MODEL, num=2, template="The [MASK:3] of the [MASK:2].", steps=3)
    assert all(t.startswith("The") and " of the" in t for t in infilled)


@pytest.mark.distributed
def test_cli_data_parallel_megatron_matches_plain(tmp_path, capsys):
    """torchrun x2 (SEDDModel, DP = 2: the replicas split the batches) writes the same records
    as the plain twin in one process."""
    model = CONFORMANCE_DIR / "tiny_uniform"
    args = ["--no-detokenize", "--prefix", "3 4", "--num-samples", "3", "--steps", "3"]
    out = tmp_path / "dp.jsonl"
    flags = ["--backend", "megatron", "--batch-size", "1", "--output", str(out), "--no-progress"]
    run_torchrun(TOOL, 2, ["--load", str(model), *args, *flags], timeout=180)
    assert cli_main(*args, "--no-progress", model=model) == 0
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tokens"] for r in records] == [r["tokens"] for r in plain]
    assert [r["sample_index"] for r in records] == [0, 1, 2]


@pytest.mark.distributed
def test_cli_kernels_on_megatron_tp2_matches_the_torch_code(tmp_path):
    """The path a CUDA run takes: the layer kernels and the sampler's kernels (keyed uniforms,
    score sums, the race) under Triton's interpreter, on SEDDModel at TP = 2, give the tokens
    of the torch code."""
    args = ["--load", str(MODEL), "--no-detokenize", "--num-samples", "2", "--steps", "4",
            "--backend", "megatron", "--tp", "2", "--batch-size", "2", "--no-progress"]  # fmt: skip
    records = {}
    for name, env in (("kernels", {"SEDD_TRITON_ON_CPU": "1"}), ("torch", None)):
        out = tmp_path / f"{name}.jsonl"
        run_torchrun(TOOL, 2, [*args, "--output", str(out)], timeout=240, env=env)
        records[name] = [json.loads(line)["tokens"] for line in out.read_text().splitlines()]
    assert len(records["torch"]) == 2
    assert records["kernels"] == records["torch"]


def test_forced_reuse_on_a_sigma_conditioned_model_says_it_approximates(capsys):
    """tiny_absorb is sigma-conditioned: --reuse-scores on is an approximation, said in one
    line; auto (off there) says nothing."""
    args = ("--steps", "4", "--no-detokenize", "--no-progress")
    assert cli_main(*args, "--reuse-scores", "on") == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "approximation" in line]
    assert notes == [
        "generate_sedd.py: note: --reuse-scores on with a sigma-conditioned model: reused scores "
        "are an approximation (exact only for time-independent models, --sedd-time-conditioning "
        "none)"
    ]
    assert cli_main(*args) == 0
    assert "approximation" not in capsys.readouterr().err
