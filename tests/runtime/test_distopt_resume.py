"""DP=2 + Megatron's distributed optimizer (torch AdamW fallback): resuming from a torch_dist
checkpoint continues exactly like an uninterrupted run -- with apply_upstream_fixes().

The same launch resumes from the same checkpoint under three fix sets, so the test also shows
that it detects the bugs the fixes address: without fixes resume raises (empty-state assert);
without the step-counter fix the losses after resume diverge from the uninterrupted run.
"""

from pathlib import Path

import pytest

from tests.launch import parse_result, run_torchrun

WORKER = Path(__file__).parent / "workers" / "distopt_resume.py"
K = 3  # steps before and after the checkpoint
PARTIAL = "empty_state+no_grad_loader"  # everything but the shared-step fix


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    ckpt = tmp_path_factory.mktemp("distopt")
    args = [str(ckpt), str(K), "none", PARTIAL, "all"]
    return parse_result(run_torchrun(WORKER, 2, args, 240).stdout)


@pytest.mark.distributed
def test_first_half_matches_reference(runs):
    assert runs["first_half"] == runs["reference"][:K]


@pytest.mark.distributed
def test_resume_with_upstream_fixes_is_exact(runs):
    resumed = runs["resumed"]["all"]
    assert isinstance(resumed, list), resumed
    assert resumed == pytest.approx(runs["reference"][K:], rel=1e-6, abs=1e-6)


@pytest.mark.distributed
def test_resume_without_fixes_fails(runs):
    assert isinstance(runs["resumed"]["none"], str), runs["resumed"]["none"]
    assert runs["resumed"]["none"].startswith("AssertionError")


@pytest.mark.distributed
def test_shared_step_counter_bug_is_detected(runs):
    resumed = runs["resumed"][PARTIAL]
    assert isinstance(resumed, list), resumed
    assert resumed != pytest.approx(runs["reference"][K:], rel=1e-6, abs=1e-6)
