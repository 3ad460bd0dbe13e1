"""Exact resume, resharding on resume, and SIGKILL at random moments (some during a save)."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.launch import REPO_ROOT, worker_env
from tests.training.conftest import PRETRAIN, TINY, data_flags, pretrain, read_metrics

pytestmark = pytest.mark.distributed

TRACKER = "latest_checkpointed_iteration.txt"


def checkpoint_tensors(ckpt_dir: Path, iteration: int, tmp_path: Path) -> dict:
    """Model (and EMA) tensors of a torch_dist checkpoint, read without a process group."""
    out = tmp_path / f"{ckpt_dir.name}_{iteration}.pt"
    dcp_to_torch_save(ckpt_dir / f"iter_{iteration:07d}", out)
    state = torch.load(out, weights_only=False)  # produced by this test from our own checkpoint
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and "optimizer" not in k}


def test_stop_and_resume_is_bit_identical(corpus, tmp_path):
    common = [*TINY, *data_flags(corpus), "--train-iters", "8", "--eval-interval", "8",
              "--save-interval", "4"]  # fmt: skip
    whole, split = tmp_path / "whole", tmp_path / "split"
    pretrain([*common, "--save", str(whole), "--sedd-metrics-file", str(tmp_path / "whole.jsonl")])
    # Stop after iteration 4 (checkpoint), then resume to 8.
    pretrain([*common, "--save", str(split), "--load", str(split), "--exit-interval", "4",
              "--sedd-metrics-file", str(tmp_path / "split.jsonl")])  # fmt: skip
    pretrain([*common, "--save", str(split), "--load", str(split),
              "--sedd-metrics-file", str(tmp_path / "split.jsonl")])  # fmt: skip

    a, b = read_metrics(tmp_path / "whole.jsonl"), read_metrics(tmp_path / "split.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for i in range(1, 9):
        assert (a[i]["loss"], a[i]["grad_norm"]) == (b[i]["loss"], b[i]["grad_norm"]), i
    final_a = checkpoint_tensors(whole, 8, tmp_path)
    final_b = checkpoint_tensors(split, 8, tmp_path)
    ema_keys = [k for k in final_a if k.startswith("ema.")]
    assert ema_keys, "no EMA weights in the checkpoint"
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key


def test_tp2_checkpoint_resumes_at_tp1(corpus, tmp_path):
    common = [*TINY, *data_flags(corpus), "--train-iters", "6", "--eval-interval", "6"]
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


def test_sigkill_always_resumes_from_the_last_complete_checkpoint(corpus, tmp_path):
    rng = random.Random(20261129)
    common = [*TINY, *data_flags(corpus), "--train-iters", "12", "--eval-interval", "12",
              "--save-interval", "2"]  # fmt: skip
    reference = tmp_path / "reference.jsonl"
    pretrain([*common, "--save", str(tmp_path / "ref"), "--sedd-metrics-file", str(reference)])

    ckpt, metrics = tmp_path / "ckpt", tmp_path / "killed.jsonl"
    args = [*common, "--save", str(ckpt), "--load", str(ckpt), "--sedd-metrics-file", str(metrics)]

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
    expected, got = read_metrics(reference), read_metrics(metrics)
    assert sorted(got) == list(range(1, 13))
    for i in range(1, 13):
        assert got[i]["loss"] == expected[i]["loss"], i
        assert got[i]["grad_norm"] == expected[i]["grad_norm"], i
