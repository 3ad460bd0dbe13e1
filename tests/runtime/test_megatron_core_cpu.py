"""Megatron-Core on CPU over gloo: a TransformerBlock, the RNG tracker, torch_dist checkpoints
(one process), and TP=2 (+ sequence parallelism) against TP=1 (torchrun, two processes).

Each worker runs once per module (fixtures); the tests check parts of its report.
"""

from pathlib import Path

import pytest

from tests.launch import parse_result, run_python, run_torchrun

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    ckpt = tmp_path_factory.mktemp("torch_dist")
    return parse_result(run_python(WORKERS / "single_process.py", [str(ckpt)], 180).stdout)


@pytest.fixture(scope="module")
def tp_errors() -> dict:
    return parse_result(run_torchrun(WORKERS / "tp_equivalence.py", 2, [], 180).stdout)


def test_enable_cpu_megatron_is_idempotent(single):
    assert single["world_size"] == 1
    assert single["enable_again"] is True
    assert single["function_modes"] == 1


def test_transformer_block_forward_backward(single):
    assert single["block_output_shape"] == [8, 2, 32]
    assert single["block_grads_finite"]
    assert single["block_params_without_grad"] == 0


def test_rng_tracker_forks_cpu_generator_with_megatron_seeds(single):
    assert single["tracker_class"] == "CpuRNGStatesTracker"
    assert single["tracker_seeded_like_megatron"]
    assert single["tracker_restores_outer_state"]


def test_torch_dist_checkpoint_round_trip(single):
    assert single["ckpt_tensors"] > 0
    assert single["ckpt_differs_before_load"]
    assert single["ckpt_mismatched_after_load"] == []
    assert single["ckpt_hashed_while_written"] == {"__0_0.distcp": True}  # the shard, as written


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["tp", "sp"])
def test_tp2_matches_tp1(tp_errors, mode):
    errors = tp_errors["errors"][mode]
    assert {"output", "input_grad"} <= errors.keys()
    assert len([k for k in errors if k.startswith("grad:")]) >= 20
    bad = {name: err for name, err in errors.items() if err > 1e-6}
    assert not bad, bad
