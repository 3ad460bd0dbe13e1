"""pretrain_sedd.py through its real command line, in subprocesses, on real text (PTB)."""

import math

import pytest

from tests.training.conftest import TINY, data_flags, pretrain, read_metrics

pytestmark = pytest.mark.distributed


def test_loss_falls_on_real_text(corpus, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    out = pretrain([*TINY, *data_flags(corpus), "--train-iters", "50", "--eval-interval", "50",
                    "--sedd-metrics-file", str(metrics), "--save", str(tmp_path / "ckpt"),
                    "--save-interval", "50"])  # fmt: skip
    steps = read_metrics(metrics)
    assert sorted(steps) == list(range(1, 51))
    first = sum(steps[i]["loss"] for i in range(1, 6)) / 5
    last = sum(steps[i]["loss"] for i in range(46, 51)) / 5
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in steps.values())
    assert last < first - 1.0, f"loss did not fall: first 5 steps {first:.3f}, last 5 {last:.3f}"
    assert "SEDD training summary" in out.stdout
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "50"


def test_layouts_agree_on_the_first_steps(corpus, tmp_path):
    """Same data, same noise draws: TP=2, PP=2 and CP=2 losses equal the single-process ones."""
    runs = {
        "tp1": ([], 1),
        "tp2": (["--tensor-model-parallel-size", "2"], 2),
        "pp2": (["--pipeline-model-parallel-size", "2"], 2),
        "cp2": (["--context-parallel-size", "2"], 2),
    }
    losses = {}
    for name, (layout, nproc) in runs.items():
        metrics = tmp_path / f"{name}.jsonl"
        pretrain([*TINY, *data_flags(corpus), *layout, "--train-iters", "3",
                  "--eval-interval", "3", "--eval-iters", "0",
                  "--sedd-metrics-file", str(metrics)], nproc=nproc)  # fmt: skip
        losses[name] = [read_metrics(metrics)[i]["loss"] for i in (1, 2, 3)]
    for name in ("tp2", "pp2", "cp2"):
        assert losses[name] == pytest.approx(losses["tp1"], rel=1e-4), name
