"""The AR baseline (benchmarks/pretrain_ar_baseline.py) through its real command line: it trains
through megatron.training.pretrain on the SEDD data pipeline, its loss falls, TP=2 agrees with
TP=1 on the first losses and on the exact PTB likelihood (the vocabulary-parallel logits are
gathered), and the likelihood is scored on the ELBO harness's blocks."""

import json
import math
import sys

import pytest

from sedd_megatron.evaluation.data import load_eval_data
from tests.launch import REPO_ROOT, run_command
from tests.training.conftest import TINY, data_flags, read_metrics

pytestmark = pytest.mark.distributed

AR = str(REPO_ROOT / "benchmarks" / "pretrain_ar_baseline.py")


def train_ar(args, nproc=1):
    if nproc == 1:
        cmd = [sys.executable, AR, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", AR, *args]  # fmt: skip
    return run_command(cmd, 300)


def test_ar_baseline_learns_and_scores_the_elbo_blocks(corpus, tmp_path):
    metrics, out = tmp_path / "m.jsonl", tmp_path / "ar.json"
    proc = train_ar([*TINY, *data_flags(corpus), "--train-iters", "30", "--eval-interval", "15",
                     "--sedd-metrics-file", str(metrics), "--save", str(tmp_path / "ckpt"),
                     "--save-interval", "30", "--ar-eval-data", "ptb-test",
                     "--ar-eval-max-blocks", "6", "--ar-eval-output", str(out)])  # fmt: skip
    assert "pretrain_ar_baseline training summary" in proc.stdout
    steps = read_metrics(metrics)
    assert sorted(steps) == list(range(1, 31))
    first = sum(steps[i]["loss"] for i in range(1, 4)) / 3
    last = sum(steps[i]["loss"] for i in range(28, 31)) / 3
    assert first == pytest.approx(math.log(50257), rel=0.05)  # uniform at initialisation
    assert last < first - 1.0, (first, last)
    doc = json.loads(out.read_text())
    blocks = load_eval_data("ptb-test", 64, max_blocks=6, vocab_size=50257)
    assert doc["data"] == blocks.summary() and len(doc["block_nlls"]) == 6
    assert doc["tokens"] == 6 * 64 and doc["eval_with_ema"]
    assert doc["perplexity"] == pytest.approx(math.exp(sum(doc["block_nlls"]) / (6 * 64)))
    summary = json.loads((tmp_path / "ckpt" / "sedd_summary.json").read_text())
    assert summary["tokens_trained"] == 30 * 4 * 64
    assert [v["iteration"] for v in summary["validation"] if v["split"] == "valid"] == [15, 30]


def test_tp2_scores_the_tp1_checkpoint_alike(corpus, tmp_path):
    """A TP=1 checkpoint loaded at TP=2 (torch_dist reshards it; no further training) gives
    the same exact block likelihoods: the vocabulary-parallel logits are gathered right."""
    common = [
        *TINY,
        *data_flags(corpus),
        "--train-iters",
        "3",
        "--eval-iters",
        "0",
        "--eval-interval",
        "3",
        "--ar-eval-data",
        "ptb-test",
        "--ar-eval-max-blocks",
        "3",
    ]
    ckpt = tmp_path / "ckpt"
    train_ar([*common, "--save", str(ckpt), "--save-interval", "3",
              "--ar-eval-output", str(tmp_path / "tp1.json")])  # fmt: skip
    train_ar([*common, "--load", str(ckpt), "--tensor-model-parallel-size", "2",
              "--ar-eval-output", str(tmp_path / "tp2.json")], nproc=2)  # fmt: skip
    tp1, tp2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("tp1", "tp2"))
    assert tp2["block_nlls"] == pytest.approx(tp1["block_nlls"], rel=1e-5)
    assert tp1["block_nlls"] != pytest.approx([b * 1.001 for b in tp1["block_nlls"]], rel=1e-5)
