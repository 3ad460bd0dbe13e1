"""The path a CUDA run takes, driven on CPU through pretrain_sedd.py: the fused Triton kernels
(under Triton's interpreter, ``SEDD_TRITON_ON_CPU=1``) with Megatron's own training defaults
(``deallocate_pipeline_outputs``, Float16Module and the loss scaler, recomputation, the
distributed optimizer with overlap, the interleaved pipeline).

Each case trains a few iterations three times on one layout: with the kernels and torch's fused
Adam (saving at iteration 2 and at the end), resumed from iteration 2 the same way, and with the
unfused torch code and the multi-tensor Adam. The resumed steps must equal the uninterrupted
ones bit for bit, and the fused losses must agree with the unfused ones within the case's
tolerance (the kernels compute in fp32 with one rounding to the activation dtype; the torch code
rounds after each op). The map of these paths and what stays uncovered is docs/runtime.md §8.
"""

import math

import pytest

from tests.launch import REPO_ROOT
from tests.training.conftest import pretrain, read_metrics

pytestmark = pytest.mark.distributed

# The Triton kernels and torch's fused Adam on CPU tensors (TRITON_INTERPRET=1 comes from
# tests/conftest.py): the path a CUDA run takes by default.
KERNELS_ON = {"SEDD_TRITON_ON_CPU": "1", "SEDD_FUSED_ADAM_ON_CPU": "1"}
ITERS = 4
RESUME_AT = 2

# The CPU config at the smallest sizes that still exercise every path: two layers (four for the
# virtual pipeline), sequence 16, one sequence per micro-batch and two micro-batches per step, a
# 512-token vocabulary (the interpreter runs each kernel program in Python, so its cost grows
# with rows and columns), and dropout off, so that the fused and unfused runs draw nothing
# differently (the kernels' dropout masks come from Philox, the torch code's from torch's
# generator).
BASE = [
    "--config", str(REPO_ROOT / "configs" / "sedd_tiny_cpu.yaml"), "--mock-data",
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
    "--ffn-hidden-size", "256", "--sedd-cond-dim", "32", "--seq-length", "16",
    "--max-position-embeddings", "16", "--vocab-size", "512", "--micro-batch-size", "1",
    "--global-batch-size", "2", "--lr-warmup-iters", "1", "--eval-iters", "0",
    "--train-iters", str(ITERS), "--log-interval", "1", "--hidden-dropout", "0.0",
    "--attention-dropout", "0.0",
]  # fmt: skip

# name: (flags, processes, relative tolerance of fused vs unfused losses and grad norms)
CASES = {
    # The first micro-batch used to stop here: a fused op's output was a view, which Megatron's
    # deallocate_output_tensor refuses to free.
    "pp2": (["--pipeline-model-parallel-size", "2"], 2, 1e-4),
    "pp2-virtual-selective-recompute": (
        ["--num-layers", "4", "--pipeline-model-parallel-size", "2",
         "--num-layers-per-virtual-pipeline-stage", "1", "--recompute-granularity", "selective"],
        2,
        1e-4,
    ),
    "tp2-sp-full-recompute": (
        ["--tensor-model-parallel-size", "2", "--sequence-parallel",
         "--recompute-granularity", "full", "--recompute-method", "uniform",
         "--recompute-num-layers", "1"],
        2,
        1e-4,
    ),
    # Megatron refuses distributed saved activations under sequence parallelism.
    "tp2-full-recompute-distributed": (
        ["--tensor-model-parallel-size", "2", "--recompute-granularity", "full",
         "--recompute-method", "block", "--recompute-num-layers", "2",
         "--distribute-saved-activations"],
        2,
        1e-4,
    ),
    "cp2-bf16": (["--context-parallel-size", "2", "--bf16"], 2, 2e-2),
    "dp2-distopt-overlap-fp16": (
        ["--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather",
         "--fp16", "--initial-loss-scale", "128"],
        2,
        2e-2,
    ),
}  # fmt: skip


def _train(tmp_path, name: str, flags: list[str], nproc: int, env=None, extra=()) -> dict:
    """Per-step metrics of one pretrain_sedd.py run; checks its fused-kernel status line."""
    metrics = tmp_path / f"{name}.jsonl"
    out = pretrain([*BASE, *flags, *extra, "--sedd-metrics-file", str(metrics)], nproc=nproc,
                   env=env, timeout=420)  # fmt: skip
    status = "SEDD fused kernels (Triton's CPU interpreter" if env else "SEDD fused kernels: none"
    assert status in out.stdout, f"{name}: no {status!r} line"
    return read_metrics(metrics)


@pytest.mark.parametrize("case", list(CASES))
def test_fused_run_matches_unfused_and_resumes_exactly(case, tmp_path):
    flags, nproc, rel = CASES[case]
    ckpt = tmp_path / "ckpt"
    save = ["--save", str(ckpt), "--save-interval", str(RESUME_AT)]
    fused = _train(tmp_path, "fused", flags, nproc, KERNELS_ON, save)
    resumed = _train(tmp_path, "resumed", flags, nproc, KERNELS_ON,
                     [*save, "--load", str(ckpt), "--ckpt-step", str(RESUME_AT)])  # fmt: skip
    unfused = _train(tmp_path, "unfused", flags, nproc, None, ["--no-sedd-fused-kernels"])

    assert sorted(fused) == sorted(unfused) == list(range(1, ITERS + 1))
    assert sorted(resumed) == list(range(RESUME_AT + 1, ITERS + 1))
    for i in range(RESUME_AT + 1, ITERS + 1):  # the same steps, bit for bit
        assert resumed[i]["loss"] == fused[i]["loss"], f"iteration {i}: loss after resume"
        assert resumed[i]["grad_norm"] == fused[i]["grad_norm"], f"iteration {i}: grad norm"
    for i in range(1, ITERS + 1):
        assert math.isfinite(fused[i]["loss"]), f"iteration {i}: loss {fused[i]['loss']}"
        for run in (fused, unfused):  # no step skipped by the fp16 loss scaler
            assert run[i]["update_successful"] and run[i]["grad_norm"] is not None, run[i]
        for key in ("loss", "grad_norm"):
            assert fused[i][key] == pytest.approx(unfused[i][key], rel=rel), f"iteration {i}: {key}"
