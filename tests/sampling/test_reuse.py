"""Reused scores for unchanged rows (SamplingOptions.reuse_unchanged) on the plain twin.

Independent truth: the same sampler with reuse off, i.e. a forward pass at every step. For a
time-independent model the reused, sigma-shifted scores are the model's own, so the tokens must
be identical, while the rows run through the model must be fewer.
"""

import dataclasses

import pytest
import torch

from sedd_megatron.errors import ConfigError
from sedd_megatron.plain import SEDD
from sedd_megatron.sampling import Condition, PlainScoreModel, Sampler, SamplingOptions
from tests.conftest import CONFORMANCE_DIR


def time_independent_model(seq_length=16) -> PlainScoreModel:
    plain = SEDD.from_pretrained(CONFORMANCE_DIR / "tiny_absorb")
    weights = {k: v for k, v in plain.state_dict().items() if "sigma_map" not in k}
    weights["cond_map.cond"] = torch.randn(
        plain.config.cond_dim, generator=torch.Generator().manual_seed(3)
    )
    model = SEDD(dataclasses.replace(plain.config, time_conditioning="none"))
    model.load_state_dict(weights, strict=True)
    return PlainScoreModel(model, seq_length=seq_length)


@pytest.fixture(scope="module")
def ti_model():
    return time_independent_model()


def run(model, reuse, predictor="analytic", steps=48, ids=(0, 1, 2), conditions=None):
    options = SamplingOptions(predictor=predictor, steps=steps, reuse_unchanged=reuse)
    sampler = Sampler(model, options)
    x = sampler.sample(conditions, list(ids), seed=7)
    return x, sampler


@pytest.mark.parametrize("predictor", ["analytic", "euler"])
def test_reuse_is_exact_and_saves_forward_passes(ti_model, predictor):
    prompt = Condition(locs=torch.tensor([0, 1]), ids=torch.tensor([5, 6]))
    conditions = [Condition.none(), prompt, Condition.none()]
    off, off_sampler = run(ti_model, False, predictor, conditions=conditions)
    on, on_sampler = run(ti_model, None, predictor, conditions=conditions)  # auto: on here
    assert on_sampler.reuse and not off_sampler.reuse
    assert torch.equal(on, off)
    rows = len(off_sampler.steps) * 3
    assert off_sampler.stats == {"forward_passes": len(off_sampler.steps),
                                 "rows_evaluated": rows, "rows_reused": 0}  # fmt: skip
    stats = on_sampler.stats
    assert stats["rows_evaluated"] + stats["rows_reused"] == rows
    assert stats["rows_evaluated"] < rows * 0.8, stats
    assert stats["forward_passes"] < len(on_sampler.steps)  # some steps skip the model entirely
    # Reused scores are the model's own: every row alone (another batch) draws the same.
    alone, _ = run(ti_model, True, predictor, ids=[1], conditions=[prompt])
    assert torch.equal(alone[0], on[1])


def test_moved_score_equals_fresh_score(ti_model):
    """log s(x, sigma_new) = log s(x, sigma_old) + log(e^sigma_old - 1) - log(e^sigma_new - 1)
    off the current token, the identity the cache relies on."""
    from sedd_megatron.diffusion import score_log_expm1 as _log_expm1

    x = torch.randint(0, 1001, (2, 16), generator=torch.Generator().manual_seed(0))
    old, new = torch.full((2,), 2.5), torch.full((2,), 0.3)
    moved = ti_model.log_score(x, old) + (_log_expm1(old) - _log_expm1(new))[:, None, None]
    moved.scatter_(-1, x[..., None], 0.0)
    torch.testing.assert_close(moved, ti_model.log_score(x, new), rtol=0, atol=2e-5)


def test_auto_is_off_for_sigma_conditioned_models():
    plain = PlainScoreModel.from_pretrained(CONFORMANCE_DIR / "tiny_absorb", seq_length=16)
    assert not plain.time_independent
    assert not Sampler(plain, SamplingOptions(steps=4)).reuse
    assert Sampler(plain, SamplingOptions(steps=4, reuse_unchanged=True)).reuse  # approximation


def test_fp32_sampling_refuses_or_ignores_reuse(ti_model):
    with pytest.raises(ConfigError, match="reuse_unchanged cannot be combined with fp32"):
        SamplingOptions(fp32_sampling=True, reuse_unchanged=True)
    sampler = Sampler(ti_model, SamplingOptions(steps=4, fp32_sampling=True))
    assert not sampler.reuse  # auto: off in the reference's replay
    with pytest.raises(ConfigError, match="reuse_unchanged must be"):
        SamplingOptions(reuse_unchanged="yes")


@pytest.mark.distributed
@pytest.mark.parametrize("layout", [["--tp", "2"], ["--pp", "2"]], ids=["tp2", "pp2"])
def test_megatron_layouts_reuse_alike_and_match_the_plain_twin(ti_model, tmp_path, layout):
    """Every rank skips the same forward passes, and the tokens equal the plain twin's without
    reuse (the same samples on any layout, reuse on or off)."""
    from pathlib import Path

    from tests.launch import parse_result, run_torchrun

    ti_model.model.save_pretrained(tmp_path / "ti")
    worker = Path(__file__).parent / "workers" / "reuse_sampling.py"
    result = parse_result(run_torchrun(worker, 2, [str(tmp_path / "ti"), *layout], 240).stdout)
    assert result["time_independent"]
    reference, _ = run(ti_model, False, ids=[0, 1, 2])
    assert result["tokens_True"] == reference.tolist() == result["tokens_False"]
    on = result["stats_True"]
    assert all(stats == on[0] for stats in on), on
    assert on[0]["rows_evaluated"] < result["stats_False"][0]["rows_evaluated"]
