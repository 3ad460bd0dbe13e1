"""Exact resume with dropout, resharding on resume, and SIGKILL at random moments (some during
a save); the metrics file holds each iteration once however often a run restarts."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.launch import REPO_ROOT, worker_env
from tests.training.conftest import PRETRAIN, TINY, pretrain, read_metrics

pytestmark = pytest.mark.distributed

TRACKER = "latest_checkpointed_iteration.txt"
VOCAB = 1000  # a small vocabulary keeps the checkpoints (and the runs) small


def _flags(**changes: str) -> list[str]:
    """TINY with some flag values changed (``hidden_dropout="0.1"``)."""
    flags = list(TINY)
    for name, value in changes.items():
        flags[flags.index("--" + name.replace("_", "-")) + 1] = value
    return flags


# Hidden and attention dropout on: every step draws masks from the default generator and from
# the tensor-parallel RNG tracker, whose states the checkpoint must restore exactly.
DROPOUT = [*_flags(vocab_size=str(VOCAB), hidden_dropout="0.1"), "--attention-dropout", "0.1"]
NO_DROPOUT = _flags(vocab_size=str(VOCAB))  # TP1 and TP2 draw different attention masks


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    """Indexed train/valid/test datasets with token ids < VOCAB (random documents)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    out = tmp_path_factory.mktemp("resume_data")
    rng = numpy.random.default_rng(12)
    flags = []
    for split in ("train", "valid", "test"):
        builder = IndexedDatasetBuilder(str(out / f"{split}.bin"), dtype=numpy.uint16)
        for _ in range(100 if split == "train" else 20):
            doc = rng.integers(0, VOCAB, size=int(rng.integers(20, 80)), dtype=numpy.uint16)
            builder.add_document(doc, [len(doc)])
        builder.finalize(str(out / f"{split}.idx"))
        flags += [f"--{split}-data-path", str(out / split)]
    return flags


ITERS = 12


def _common(data: list[str]) -> list[str]:
    return [*DROPOUT, *data, "--train-iters", str(ITERS), "--eval-interval", str(ITERS)]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    """An uninterrupted run of ITERS steps with dropout: its metrics and final checkpoint."""
    out = tmp_path_factory.mktemp("reference")
    metrics = out / "metrics.jsonl"
    pretrain([*_common(data), "--save", str(out / "ckpt"), "--save-interval", str(ITERS),
              "--sedd-metrics-file", str(metrics)])  # fmt: skip
    return {"metrics": read_metrics(metrics), "ckpt": out / "ckpt"}


def checkpoint_tensors(ckpt_dir: Path, iteration: int, tmp_path: Path) -> dict:
    """Model (and EMA) tensors of a torch_dist checkpoint, read without a process group."""
    out = tmp_path / f"{ckpt_dir.parent.name}_{ckpt_dir.name}_{iteration}.pt"
    dcp_to_torch_save(ckpt_dir / f"iter_{iteration:07d}", out)
    state = torch.load(out, weights_only=False)  # produced by this test from our own checkpoint
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and "optimizer" not in k}


def _iterations(metrics: Path) -> list[int]:
    """The iteration of every line, in file order (read_metrics would hide a duplicate)."""
    return [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()]


def _assert_same_steps(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected) == list(range(1, ITERS + 1))
    for i in range(1, ITERS + 1):
        assert got[i]["loss"] == expected[i]["loss"], f"iteration {i}: loss"
        assert got[i]["grad_norm"] == expected[i]["grad_norm"], f"iteration {i}: grad norm"


def test_stop_and_resume_with_dropout_is_bit_identical(data, reference, tmp_path):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "split.jsonl"
    args = [*_common(data), "--save", str(ckpt), "--save-interval", "4",
            "--sedd-metrics-file", str(metrics)]  # fmt: skip
    pretrain([*args, "--exit-interval", "6"])  # saves iterations 4 and 6 (on exit)
    assert _iterations(metrics) == [1, 2, 3, 4, 5, 6]
    # Back to iteration 4: steps 5 and 6 run again; their first records must go.
    pretrain([*args, "--load", str(ckpt), "--ckpt-step", "4"])
    assert _iterations(metrics) == list(range(1, ITERS + 1))
    _assert_same_steps(read_metrics(metrics), reference["metrics"])
    final_a = checkpoint_tensors(reference["ckpt"], ITERS, tmp_path)
    final_b = checkpoint_tensors(ckpt, ITERS, tmp_path)
    ema_keys = [k for k in final_a if k.startswith("ema.")]
    assert ema_keys, "no EMA weights in the checkpoint"
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key


def test_tp2_checkpoint_resumes_at_tp1(data, tmp_path):
    common = [*NO_DROPOUT, *data, "--train-iters", "6", "--eval-interval", "6"]
    ckpt = tmp_path / "ckpt"
    pretrain([*common, "--tensor-model-parallel-size", "2", "--save", str(ckpt),
              "--save-interval", "4", "--exit-interval", "4",
              "--sedd-metrics-file", str(tmp_path / "tp2.jsonl")], nproc=2)  # fmt: skip
    pretrain([*common, "--load", str(ckpt), "--sedd-metrics-file", str(tmp_path / "tp1.jsonl")])
    pretrain([*common, "--tensor-model-parallel-size", "2", "--load", str(ckpt),
              "--sedd-metrics-file", str(tmp_path / "tp2_resumed.jsonl")], nproc=2)  # fmt: skip
    at_tp1 = read_metrics(tmp_path / "tp1.jsonl")
    at_tp2 = read_metrics(tmp_path / "tp2_resumed.jsonl")
    assert sorted(at_tp1) == sorted(at_tp2) == [5, 6]  # resumed after iteration 4
    for i in (5, 6):
        assert at_tp1[i]["loss"] == pytest.approx(at_tp2[i]["loss"], rel=1e-4)


def _complete(ckpt: Path, iteration: int) -> bool:
    folder = ckpt / f"iter_{iteration:07d}"
    return (folder / ".metadata").is_file() and (folder / "metadata.json").is_file()


def _run_until(args, trigger, rng) -> int:
    """Start training; SIGKILL its process group when ``trigger`` fires; return the exit code."""
    proc = subprocess.Popen(
        [sys.executable, PRETRAIN, *args],
        cwd=REPO_ROOT,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 240
    killed = False
    for line in proc.stdout:
        if time.time() > deadline:
            break
        if trigger(line):
            time.sleep(rng.uniform(0.0, 0.3))
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
    if not killed and proc.poll() is None:
        proc.stdout.read()
    proc.wait(timeout=60)
    return proc.returncode


def test_sigkill_always_resumes_from_the_last_complete_checkpoint(data, reference, tmp_path):
    rng = random.Random(20261129)
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "killed.jsonl"
    args = [*_common(data), "--save-interval", "2", "--save", str(ckpt), "--load", str(ckpt),
            "--sedd-metrics-file", str(metrics)]  # fmt: skip

    def nth_line_with(text: str, n: int):
        """A trigger that fires at the n-th output line containing ``text`` (always fires)."""
        seen = [0]

        def trigger(line: str) -> bool:
            seen[0] += text in line
            return seen[0] == n

        return trigger

    # Each kill lands a random 0-0.3 s after its trigger line: inside a checkpoint save for
    # the first and last, between or inside training steps for the middle one.
    triggers = [
        nth_line_with("saving checkpoint at iteration", 1),
        nth_line_with("consumed samples", rng.randint(1, 3)),
        nth_line_with("saving checkpoint at iteration", 1),
    ]
    for trigger in triggers:
        code = _run_until(args, trigger, rng)
        assert code == -signal.SIGKILL or code != 0
        tracker = ckpt / TRACKER
        if tracker.exists():
            latest = int(tracker.read_text().strip())  # never empty or torn
            assert _complete(ckpt, latest), f"tracker points at incomplete iteration {latest}"
    out = pretrain(args)
    assert "loading checkpoint from" in out.stdout or "loading" in out.stdout.lower()
    assert _iterations(metrics) == list(range(1, ITERS + 1))  # re-run steps recorded once
    _assert_same_steps(read_metrics(metrics), reference["metrics"])
