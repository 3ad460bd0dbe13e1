"""The sampler engine on the plain twin: the reference's recorded runs (teacher-forced weights,
float32 replay), sharded weights = full weights, batch invariance, clamped positions."""

import pytest
import torch

from sedd_megatron.sampling import (
    Condition,
    PlainScoreModel,
    Sampler,
    SamplingOptions,
    schedule,
    score_sum,
    tile_weights,
)
from tests.conftest import CONFORMANCE_DIR, CONFORMANCE_MODELS

from .cases import SAMPLE_CASES, conformance_report, prompt_conditions, sample_case


@pytest.fixture(scope="module", params=CONFORMANCE_MODELS)
def plain(request):
    return PlainScoreModel.from_pretrained(CONFORMANCE_DIR / request.param)


def test_conformance_with_plain_twin(plain):
    """Our float64 weights equal the reference's recorded weights (teacher forcing) and the
    float32 mode redraws every recorded draw from the recorded RNG states."""
    name = "tiny_absorb" if plain.graph.absorb else "tiny_uniform"
    report = conformance_report(plain, CONFORMANCE_DIR, name)
    for predictor in ("euler", "analytic"):
        assert report[f"{name}/{predictor}/weights_excess"] <= 0
        assert report[f"{name}/{predictor}/weights_relative"] < 2e-5
        assert report[f"{name}/{predictor}/replay"]


@pytest.mark.parametrize("predictor", ["euler", "analytic"])
def test_sharded_weights_equal_full(plain, predictor):
    """Weights of vocabulary slices, from the slice's scores and the summed partial sums, equal
    the full-vocabulary weights (what a TP shard computes)."""
    graph = plain.graph
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, graph.dim, (2, 32), generator=gen)
    x[0, :10] = graph.dim - 1
    log_score = plain.log_score(x, torch.full((2,), 0.7)).reshape(-1, graph.dim)
    flat = x.reshape(-1)
    for step in schedule(plain.noise, 4, predictor)[::2]:
        full = tile_weights(graph, step, log_score, flat, 0, score_sum(graph, log_score, 0))
        shards = [(0, 300), (300, 512), (512, graph.dim)]
        total = sum(score_sum(graph, log_score[:, a:b], a) for a, b in shards)
        parts = [tile_weights(graph, step, log_score[:, a:b], flat, a, total) for a, b in shards]
        # summation order only (amplified by e^dsigma in the uniform analytic step)
        torch.testing.assert_close(torch.cat(parts, -1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("predictor", SAMPLE_CASES)
def test_batch_invariance_and_clamping(plain, predictor):
    """Sample 1 alone equals row 1 of the batch of three; prompts hold; no MASK is left."""
    batch = sample_case(plain, predictor)
    alone = sample_case(plain, predictor, ids=[1])
    assert torch.equal(batch[1:2], alone)
    clamp = prompt_conditions()[1]
    assert torch.equal(batch[1, clamp.locs], clamp.ids)
    assert (batch < plain.graph.num_tokens).all()
    assert not torch.equal(batch[0], batch[2])  # different samples differ


def test_seed_changes_samples(plain):
    sampler = Sampler(plain, SamplingOptions(steps=4))
    assert not torch.equal(sampler.sample(None, [0], 1), sampler.sample(None, [0], 2))
    assert torch.equal(sampler.sample(None, [0], 1), sampler.sample(None, [0], 1))


def test_clamped_at_every_draw(plain):
    seen = []
    clamp = Condition(torch.tensor([3, 30]), torch.tensor([11, 12]))
    for fp32 in (False, True):
        sampler = Sampler(plain, SamplingOptions(steps=4, fp32_sampling=fp32))
        x = sampler.sample(
            [clamp] * 2, [0, 1], 0, callback=lambda s, x_in, w, x_out: seen.append(x_in)
        )
        assert torch.equal(x[:, clamp.locs], clamp.ids.expand(2, -1))
    assert len(seen) == 10 and all(
        torch.equal(s[:, clamp.locs], clamp.ids.expand(2, -1)) for s in seen
    )


def test_fp32_sampling_needs_full_vocabulary(plain):
    plain.tp_size = 2
    try:
        with pytest.raises(ValueError, match="full vocabulary on one rank"):
            Sampler(plain, SamplingOptions(fp32_sampling=True))
    finally:
        del plain.tp_size


def test_split_sums_path_draws_the_one_shard_samples(plain, monkeypatch):
    """The engine's tensor-parallel path (score sums, all-reduce, race) and its one-rank path
    (sums and race in one pass) draw the same samples (here on one rank holding everything)."""
    sampler = Sampler(plain, SamplingOptions(steps=3))
    one_rank = sampler.sample(None, [0, 5], 3)
    monkeypatch.setattr(plain, "tp_size", 2, raising=False)
    assert torch.equal(sampler.sample(None, [0, 5], 3), one_rank)
