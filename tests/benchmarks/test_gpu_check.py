"""The GPU check script on a machine without CUDA, and the parsing of its steps' logs."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402

BENCH_LOG = """
bench_gpu_training: NVIDIA H200, local spec, fused kernels, torch.bfloat16, params 169.6M, ...
 steps   s/step   tokens/s  GFLOP/token TFLOP/s     MFU       loss  grad norm  peak GB
    12    0.057     287000        0.856    245.7   24.8%     9.1234     1.2345     21.3
MFU against --peak-tflops 989; all steps succeeded: True
"""


def test_without_cuda_it_says_so_and_exits_0():
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout


def test_bench_row_is_parsed():
    figures = gpu_check.parse_bench(BENCH_LOG)
    assert figures == {"s/step": 0.057, "tokens/s": 287000.0, "MFU": 0.248, "peak GB": 21.3}
    assert gpu_check.parse_bench("Traceback ...") == {}


def test_other_logs_are_parsed():
    summary = (
        'SEDD training summary: {"checkpoint": "x", "iterations": 30, "final_train_loss": 9.5}'
    )
    assert gpu_check.parse_pretrain("noise\n" + summary) == {
        "final_train_loss": 9.5,
        "iterations": 30,
    }
    elbo = "ELBO: 7.7590 nats/token (95% CI 7.7 .. 7.8), 11.19 bits/token"
    assert gpu_check.parse_eval(elbo) == {"nats/token": 7.759}
    verify = "exported ...\nverify: max relative difference of the log-scores 1.2e-07 (ok)"
    assert gpu_check.parse_export(verify) == {"verify max rel diff": 1.2e-07}


def test_ratios_come_from_the_same_run():
    steps = {s.name: s for s in gpu_check.plan(Path("/tmp/out"), Path("/tmp/base"))}
    assert steps["train-small-baseline"].cwd == Path("/tmp/base")
    for name, tokens in [("train-small", 300.0), ("train-small-unfused", 150.0),
                         ("train-small-baseline", 100.0)]:  # fmt: skip
        steps[name].result, steps[name].figures = "ok", {"tokens/s": tokens}
    steps["generate-128"].result, steps["generate-128"].seconds = "ok", 20.0
    steps["generate-8"].result, steps["generate-8"].seconds = "ok", 8.0
    ratios = gpu_check.derived(steps)
    assert ratios["small: fused / unfused tokens/s"] == 2.0
    assert ratios["small: this / baseline tokens/s"] == 3.0
    assert "medium: this / baseline tokens/s" not in ratios  # that step did not run
    assert ratios["generate: s/step (16 x 1024, analytic)"] == pytest.approx(0.1)


def test_eval_data_is_a_megatron_indexed_dataset(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = gpu_check.write_eval_data(tmp_path / "data", vocab=1000, tokens=300)
    dataset = IndexedDataset(prefix)
    assert len(dataset) == 1 and len(dataset[0]) == 300 and int(dataset[0].max()) < 1000
