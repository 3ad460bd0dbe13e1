"""benchmarks/paper_ordering.py end to end at toy size (real PTB text, three real trainings through
megatron.training.pretrain, both likelihood evaluations), and its comparison logic."""

import json
import math
import sys
from pathlib import Path

import pytest

from tests.launch import REPO_ROOT, run_command

pytestmark = pytest.mark.distributed

SCRIPT = REPO_ROOT / "benchmarks" / "paper_ordering.py"
PNG = b"\x89PNG\r\n\x1a\n"


def test_toy_run_trains_three_models_and_scores_identical_blocks(corpus, tmp_path):
    corpus_dir = str(Path(corpus["train"]).parent)
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--size", "toy",
           "--corpus", corpus_dir]  # fmt: skip
    out = run_command(cmd, 900).stdout
    doc = json.loads((tmp_path / "results.json").read_text())
    models = doc["models"]
    assert list(models) == ["sedd-absorb", "sedd-uniform", "ar"]
    assert set(doc["training_tokens"].values()) == {4 * 2 * 32}  # same budget for all three
    lk = {name: m["likelihood"] for name, m in models.items()}
    assert len({(v["blocks"], v["tokens"]) for v in lk.values()}) == 1  # identical blocks
    assert lk["ar"]["kind"] == "exact" and lk["ar"]["ci_perplexity"] == [lk["ar"]["perplexity"]] * 2
    for name in ("sedd-absorb", "sedd-uniform"):
        v = lk[name]
        lo, hi = v["ci_perplexity"]
        assert lo <= v["perplexity"] <= hi and math.isfinite(v["perplexity"])
        terms = v["complete"]["terms_nats_per_token"]
        assert v["complete"]["nats_per_token"] == pytest.approx(sum(terms.values()), rel=1e-12)
        assert terms["prior"] == v["prior_nats_per_token"] >= 0
    for name, m in models.items():
        points = [p for p in m["training"]["validation"] if p["split"] == "valid"]
        assert [p["tokens"] for p in points] == [2 * 2 * 32, 4 * 2 * 32], name
    for plot in doc["plots"]:
        assert open(plot, "rb").read(8) == PNG
    assert set(doc["comparison"]) >= {"absorb_below_uniform", "absorb_over_ar", "uniform_over_ar"}
    assert "ar " in out and "sedd-absorb " in out  # the printed table
    # a second run keeps the finished models
    again = run_command(cmd, 300).stdout
    assert again.count("already done") == 3


COMPARE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from paper_ordering import compare
def rec(ppl, lo, hi):
    return {"likelihood": {"perplexity": ppl, "ci_perplexity": [lo, hi]}}
records = {"sedd-absorb": rec(100, 90, 110), "sedd-uniform": rec(150, 105, 200),
           "ar": rec(50, 50, 50)}
first = compare(records)
records["sedd-uniform"] = rec(150, 120, 200)
print(json.dumps([first, compare(records)]))
"""


def test_comparison_needs_disjoint_intervals():
    # in a fresh process: the script silences third-party warnings when imported
    proc = run_command([sys.executable, "-c", COMPARE, str(SCRIPT.parent)], 60)
    overlapping, disjoint = json.loads(proc.stdout.strip().splitlines()[-1])
    assert overlapping["absorb_below_uniform"]
    assert not overlapping["absorb_uniform_intervals_disjoint"]
    assert overlapping["absorb_over_ar"] == 2.0 and overlapping["uniform_over_absorb"] == 1.5
    assert disjoint["absorb_uniform_intervals_disjoint"]
