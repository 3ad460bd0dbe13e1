"""Smoke tests of the scripts in benchmarks/: each runs at its smallest settings in a fresh process
and prints its table. Nothing here checks a timing or a memory number (those are the benchmarks'
output, measured against baselines of the same run), only that the scripts work."""

import re

import pytest
import torch

from tests.launch import REPO_ROOT, run_python

BENCHMARKS = REPO_ROOT / "benchmarks"


def test_model_step_prints_table_and_ratios():
    args = ["--config", "smoke", "--vocab", "1000", "--warmup", "1", "--reps", "2"]
    out = run_python(BENCHMARKS / "bench_model_step.py", args, timeout=120).stdout
    for variant in ("sedd", "gpt", "gpt-sdpa", "plain"):
        assert re.search(rf"^{variant}\s+[\d,]+\s+\d+\.\d", out, re.M), out
    for base in ("gpt", "gpt-sdpa", "plain"):
        assert re.search(rf"^ratio SEDD/{base}: wall median \d+\.\d+", out, re.M), out
    assert "command: python benchmarks/bench_model_step.py --config smoke" in out


@pytest.mark.distributed
def test_vocab_parallel_loss_prints_per_rank_peaks():
    args = ["--batch", "1", "--seq-len", "16", "--vocab", "1000", "--device", "cpu"]
    out = run_python(BENCHMARKS / "bench_vocab_parallel_loss.py", args, timeout=120).stdout
    for graph in ("absorb", "uniform"):
        rows = re.findall(
            rf"^{graph}\s+([01])\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+(\S+)", out, re.M
        )
        assert [r[0] for r in rows] == ["0", "1"], out
        for _, ratio, rel_diff in rows:  # same loss both ways; gathering costs more memory
            assert float(rel_diff) < 1e-5 and float(ratio) > 1.0, out
    assert "command: python benchmarks/bench_vocab_parallel_loss.py" in out


def test_gpu_training_skips_without_cuda_or_runs_tiny():
    args = "--hidden 64 --layers 2 --heads 2 --seq-len 64 --micro-batch 2 --vocab 1000".split()
    args += ["--warmup", "1", "--steps", "2"]
    out = run_python(BENCHMARKS / "bench_gpu_training.py", args, timeout=120).stdout
    if torch.cuda.is_available():
        assert re.search(r"tokens/s.*MFU", out) and "all steps succeeded: True" in out, out
    else:
        assert "CUDA is not available" in out and "Skipped." in out, out


def test_gpu_training_loop_runs_on_cpu():
    out = run_python(BENCHMARKS / "bench_gpu_training.py", ["--cpu"], timeout=120).stdout
    assert "all steps succeeded: True" in out, out


def test_sampling_benchmark_prints_table():
    args = ["--configs", "tiny", "--batches", "1", "--steps", "1", "--reps", "1"]
    out = run_python(BENCHMARKS / "bench_sampling.py", args, timeout=120).stdout
    for variant in ("megatron", "plain"):
        assert re.search(rf"^tiny\s+1\s+{variant}\s+[\d.]+", out, re.M), out


def test_checkpoint_checksums_prints_the_ratio(tmp_path):
    args = ["--params", "2e6", "--reps", "1", "--dir", str(tmp_path)]
    out = run_python(BENCHMARKS / "bench_checkpoint_checksums.py", args, timeout=120).stdout
    for name in ("torch_dist", "safetensors"):
        row = rf"^{name}" + r"\s+-?[\d.]+" * 5 + "$"  # the added time may be negative (noise)
        assert re.search(row, out, re.M), out
    worst = r"^added time of the manifest / plain save \(worst\): -?[\d.]+ \(target <= 0\.05\)$"
    assert re.search(worst, out, re.M), out
    assert list(tmp_path.iterdir()) == []  # its checkpoints are removed


def test_lm_eval_benchmark_prints_cost_of_an_example():
    pytest.importorskip("lm_eval")
    args = ["--num-t-samples", "4", "--examples", "1"]
    out = run_python(BENCHMARKS / "bench_lm_eval.py", args, timeout=120).stdout
    # 4 choices x (4 t-samples + 2 tail samples + 1 is_greedy) evaluations
    assert re.search(
        r"^one 4-choice example: [\d.]+ s, 28 model evaluations \(\d+ evaluations/s", out, re.M
    ), out
    assert "command: python " in out and "bench_lm_eval.py" in out
