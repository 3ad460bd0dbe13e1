"""The sampler's fused step in torch (sedd_megatron/sampling/step.py): the graphs' affine form
of the weights, the race against a plain evaluation (full float64 weights, the keyed uniforms,
argmax), shards against the whole vocabulary, and the law of the draws."""

import pytest
import torch
from scipy import stats

from sedd_megatron.diffusion import get_graph, get_noise
from sedd_megatron.sampling import rng
from sedd_megatron.sampling import step as sampler_step
from sedd_megatron.sampling.step import (
    num_columns,
    race,
    race_one_shard,
    schedule,
    score_sum,
    score_sums,
    step_affine,
    tile_weights,
)

GRAPHS = ("absorb", "uniform")


def steps_of(graph):
    """One step of each kind: Euler, analytic (a middle one), the denoiser."""
    noise = get_noise(graph.default_noise)
    euler = schedule(noise, 6, "euler")
    analytic = schedule(noise, 6, "analytic")
    return [euler[2], analytic[3], analytic[-1]]


def case(name, batch=3, length=5, tokens=29, pad=3, seed=0):
    """A graph, float32 log-scores (B, L, V' + pad) with padding columns, tokens (B * L,) with
    MASKs (absorb) and every kind of row."""
    graph = get_graph(name, tokens)
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, length, graph.dim + pad, generator=g) * 2 - 1
    x = torch.randint(0, graph.dim, (batch * length,), generator=g)
    if graph.mask_id is not None:
        x[::2] = graph.mask_id
    return graph, scores, x


def keys_for(batch, length, step=0, seed=3):
    return rng.KeyedStreams(seed, list(range(batch)), length, "cpu").rows(step)


@pytest.mark.parametrize("name", GRAPHS)
def test_affine_form_is_sampler_weights_bit_for_bit(name):
    graph, scores, x = case(name)
    flat = scores[..., : graph.dim].reshape(-1, graph.dim).double()
    s = flat.exp()
    total = score_sum(graph, flat.float(), 0)
    for step in steps_of(graph):
        cols = num_columns(graph, step)
        for a, b in ((0, cols), (0, 4), (4, cols - 3), (cols - 3, cols)):  # slices (shards)
            want = graph.sampler_weights(
                s[:, a:b].clone(), x, a, total, step.kind, step.coef, step.exponent
            )
            f = step_affine(graph, step, x, total)
            col = torch.arange(a, b)[None, :]
            ordinary = (f.scale[:, None] * s[:, a:b] + f.shift[:, None]) * f.gain[:, None]
            special = s[:, a:b] * f.special_scale[:, None] + f.special_shift[:, None]
            special = special * f.special_gain[:, None]
            got = torch.where(col == f.special[:, None], special, ordinary)
            assert torch.equal(got, want), (step.kind, a, b)


def plain_race(graph, step, scores, x, keys, start, stop, total):
    """The race written out: full float64 weights of columns [start, stop) (``tile_weights``),
    the keyed uniforms, E = -log(u), argmax; rows that do not move keep -inf / -1."""
    rows = scores.shape[0] * scores.shape[1]
    flat = scores.reshape(rows, -1)[:, start - 0 : stop - 0]
    w = tile_weights(graph, step, flat, x, start, total)
    e = -torch.log(rng.keyed_uniforms(keys, torch.arange(start, stop)))
    value = w / e
    arg = value.argmax(-1)
    best = value.gather(-1, arg[:, None]).squeeze(-1)
    moving = graph.moving(x)
    best = torch.where(moving, best, float("-inf"))
    return best, torch.where(moving, arg + start, -1)


@pytest.mark.parametrize("name", GRAPHS)
def test_race_equals_plain_evaluation(name):
    """Same values and columns, exactly, through the blocked in-place torch code (blocks of a
    few rows forced by a small budget) and the one-shard variant."""
    graph, scores, x = case(name)
    batch, length = scores.shape[:2]
    active = graph.moving(x)
    budget = sampler_step.CHUNK_ELEMENTS["cpu"]
    sampler_step.CHUNK_ELEMENTS["cpu"] = 2 * graph.dim  # two rows per block
    try:
        for step in steps_of(graph):
            keys = keys_for(batch, length, step.index)
            total = score_sums(scores, graph.dim, graph.excluded_column(0), active)
            want_total = score_sum(graph, scores.reshape(batch * length, -1)[:, : graph.dim], 0)
            assert torch.equal(total, torch.where(active, want_total, 0.0))
            cols = num_columns(graph, step)
            want = plain_race(graph, step, scores, x, keys, 0, cols, want_total)
            affine = step_affine(graph, step, x, total)
            got = race(scores, 0, cols, keys, affine, active, fused=False)
            assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), step.kind
            one = race_one_shard(graph, step, scores, x, active, cols, keys)
            assert torch.equal(one[1], want[1]) and torch.equal(one[0], want[0]), step.kind
    finally:
        sampler_step.CHUNK_ELEMENTS["cpu"] = budget


@pytest.mark.parametrize("name", GRAPHS)
def test_shards_race_to_the_same_tokens(name):
    """Racing vocabulary shards (each from its own scores and the summed partial sums, padding
    at the end of the last) and keeping the best gives the whole vocabulary's winners."""
    graph, scores, x = case(name, tokens=40)
    batch, length = scores.shape[:2]
    active = graph.moving(x)
    bounds = [(0, 11), (11, 26), (26, graph.dim)]
    for step in steps_of(graph):
        keys = keys_for(batch, length, step.index)
        cols = num_columns(graph, step)
        full_total = score_sums(scores, graph.dim, graph.excluded_column(0), active)
        full = race(scores, 0, cols, keys, step_affine(graph, step, x, full_total), active)
        shards = [scores[..., a : (b if b < graph.dim else None)] for a, b in bounds]
        total = sum(
            score_sums(part, min(b, graph.dim) - a, graph.excluded_column(a), active)
            for part, (a, b) in zip(shards, bounds, strict=True)
        )
        affine = step_affine(graph, step, x, total)
        results = [
            race(part, a, min(b, cols) - a, keys, affine, active)
            for part, (a, b) in zip(shards, bounds, strict=True)
        ]
        values = torch.stack([r[0] for r in results])
        indices = torch.stack([r[1] for r in results])
        winner = indices.gather(0, values.argmax(0)[None]).squeeze(0)
        assert torch.equal(torch.where(active, winner, -1), full[1]), step.kind


@pytest.mark.parametrize(
    ("name", "predictor", "index"),
    [("absorb", "analytic", 0), ("absorb", "euler", 4), ("uniform", "analytic", 2)]
    + [("uniform", "euler", 2)],
)
def test_draws_follow_the_weights(name, predictor, index):
    """Brute force: 60,000 token rows with the same scores and their own keys draw each column
    with the frequency w / sum(w) (chi-square, and a binomial test of the rarest column), and
    never a column of negative weight (absorb: MASK at t = 1; uniform: staggered scores)."""
    graph = get_graph(name, 5)
    rows = 60_000
    log_score = torch.tensor([0.3, -1.0, 2.0, -6.0, 0.0, 0.5][: graph.dim], dtype=torch.float32)
    scores = log_score.expand(rows // 100, 100, graph.dim).contiguous()
    x = torch.full((rows,), graph.mask_id if graph.mask_id is not None else 1)
    step = schedule(get_noise(graph.default_noise), 4, predictor)[index]
    keys = rng.KeyedStreams(17, list(range(rows // 100)), 100, "cpu").rows(step.index)
    active = graph.moving(x)
    total = score_sums(scores, graph.dim, graph.excluded_column(0), active)
    cols = num_columns(graph, step)
    _, drawn = race(scores, 0, cols, keys, step_affine(graph, step, x, total), active)
    w = tile_weights(graph, step, log_score[None, :cols], x[:1], 0, total[:1])[0]
    counts = torch.bincount(drawn, minlength=cols).double()
    positive = w > 0
    assert counts.sum() == rows and counts[~positive].sum() == 0
    assert int(positive.sum()) >= 3
    p = w[positive] / w[positive].sum()
    assert stats.chisquare(counts[positive].numpy(), (p * rows).numpy()).pvalue > 1e-6
    rare = int(torch.argmin(torch.where(positive, w, float("inf"))))
    rate = float(w[rare] / w[positive].sum())
    assert stats.binomtest(int(counts[rare]), rows, rate).pvalue > 1e-6
