"""The sampler step's Triton kernels (sedd_megatron/kernels/sampling_step.py) in Triton's
interpreter against the torch code of sedd_megatron/sampling: the same uniform bits, the same
score sums up to summation order, the same race winners and values (up to the last bit of e^x
and log, which numpy and torch evaluate independently), and the same samples from the sampler.
"""

import pytest
import torch

from sedd_megatron.diffusion import get_graph, get_noise
from sedd_megatron.diffusion.graph import SamplerAffine
from sedd_megatron.kernels.sampling_step import (
    keyed_uniforms_triton,
    race_triton,
    score_sums_triton,
)
from sedd_megatron.sampling import PlainScoreModel, Sampler, SamplingOptions, rng
from sedd_megatron.sampling.step import (
    num_columns,
    pack_affine,
    race,
    schedule,
    score_sums,
    step_affine,
)
from tests.conftest import CONFORMANCE_DIR

pytestmark = pytest.mark.usefixtures("triton_interpreter")
ULP = 2.0**-52


def keys(count, seed=0, step=1):
    return rng.KeyedStreams(seed, list(range(count)), 1, "cpu").rows(step)


@pytest.mark.parametrize(("start", "stop"), [(0, 1), (0, 37), (40_000, 41_500)])
def test_keyed_uniforms_are_the_torch_bits(start, stop):
    k = keys(5)
    k[0] = -(2**63)
    got = keyed_uniforms_triton(k, start, stop)
    assert torch.equal(got, rng.keyed_uniforms(k, torch.arange(start, stop)))


def scores_case(graph, batch=2, length=3, pad=5, dtype=torch.float32, transposed=False):
    """Log-scores (B, L, V' + pad), padding NaN (never read), optionally a (L, B, V) layout
    seen as (B, L, V); tokens (B * L,) with MASKs for absorb."""
    g = torch.Generator().manual_seed(graph.dim)
    shape = (length, batch) if transposed else (batch, length)
    scores = torch.randn(*shape, graph.dim + pad, generator=g).to(dtype)
    scores[..., graph.dim :] = float("nan")
    if transposed:
        scores = scores.transpose(0, 1)
    x = torch.randint(0, graph.dim, (batch * length,), generator=g)
    if graph.mask_id is not None:
        x[1::2] = graph.mask_id
    return scores, x


@pytest.mark.parametrize("name", ["absorb", "uniform"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("transposed", [False, True], ids=["bld", "lbd"])
def test_score_sums(name, dtype, transposed):
    graph = get_graph(name, 1500)  # more columns than one 1024-column block
    scores, x = scores_case(graph, dtype=dtype, transposed=transposed)
    active = graph.moving(x)
    for start, stop in ((0, graph.dim), (700, graph.dim)):  # the whole vocabulary, a last shard
        part = scores[..., start:]
        excluded = graph.excluded_column(start)
        got = score_sums_triton(part, stop - start, excluded, active)
        want = score_sums(part, stop - start, excluded, active, fused=False)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
        assert bool((got[~active] == 0).all())


def assert_same_race(got, want, label):
    """Same winners exactly; values to a few ulps (e^x and log of numpy and of torch)."""
    assert torch.equal(got[1], want[1]), f"{label}: winners differ"
    both = torch.isfinite(want[0])
    assert torch.equal(torch.isfinite(got[0]), both), label
    assert bool((got[0][~both] == want[0][~both]).all()), label
    error = (got[0][both] - want[0][both]).abs() / want[0][both].abs()
    assert error.max() <= 4 * ULP, f"{label}: values differ by {error.max():.3g} relative"


@pytest.mark.parametrize("name", ["absorb", "uniform"])
def test_race_kernel_equals_torch(name):
    """Every kind of step, the whole vocabulary and a shard ending in padding, bf16 and
    float32 scores, a transposed layout; rows that do not move give -inf / -1."""
    graph = get_graph(name, 1500)
    noise = get_noise(graph.default_noise)
    steps = [schedule(noise, 4, "euler")[1], *schedule(noise, 4, "analytic")[2:]]
    for dtype, transposed in ((torch.float32, False), (torch.bfloat16, True)):
        scores, x = scores_case(graph, dtype=dtype, transposed=transposed)
        active = graph.moving(x)
        total = score_sums(scores, graph.dim, graph.excluded_column(0), active, fused=False)
        row_keys = keys(x.shape[0], step=3)
        for step in steps:
            affine = step_affine(graph, step, x, total)
            cols = num_columns(graph, step)
            for start in (0, 900):
                part = scores[..., start:]
                label = f"{name} {step.kind} {dtype} start {start}"
                want = race(part, start, cols - start, row_keys, affine, active, fused=False)
                got = race_triton(part, start, cols - start, row_keys, *pack_affine(affine), active)
                assert_same_race(got, want, label)
                assert bool((got[1][~active] == -1).all()), label
                assert bool((got[1][active] >= start).all()), label


def test_race_ties_go_to_the_lowest_column():
    """All-zero weights: every value is 0, and both paths pick the shard's first column."""
    rows = 4
    scores = torch.zeros(1, rows, 2100)
    zero = torch.zeros(rows, dtype=torch.float64)
    affine = SamplerAffine(zero, zero, zero + 1, zero.long() - 1, zero, zero, zero + 1)
    active = torch.ones(rows, dtype=torch.bool)
    row_keys = keys(rows)
    got = race_triton(scores, 500, 2100, row_keys, *pack_affine(affine), active)
    want = race(scores, 500, 2100, row_keys, affine, active, fused=False)
    assert torch.equal(got[1], torch.full((rows,), 500)) and torch.equal(want[1], got[1])


@pytest.mark.parametrize("model", ["tiny_absorb", "tiny_uniform"])
def test_sampler_with_kernels_draws_the_torch_samples(model, monkeypatch):
    """The whole sampler (limit draw, score sums, race, denoiser) with the kernels."""
    plain = PlainScoreModel.from_pretrained(CONFORMANCE_DIR / model)
    sampler = Sampler(plain, SamplingOptions(steps=1))
    monkeypatch.setenv("SEDD_TRITON_ON_CPU", "0")
    want = sampler.sample(None, [4, 1], 9)
    monkeypatch.setenv("SEDD_TRITON_ON_CPU", "1")
    got = sampler.sample(None, [4, 1], 9)
    assert torch.equal(got, want)


def test_race_nan_wins_like_argmax():
    """A NaN race value wins as torch.argmax has it (above every number, the first NaN column,
    value NaN), in the kernel and the torch twin alike: NaN log-scores give NaN weights w = s."""
    rows, start, width = 6, 500, 2100
    scores = torch.randn(1, rows, width, generator=torch.Generator().manual_seed(4))
    nan = float("nan")
    scores[0, 1, [200, 1030]] = nan  # the first NaN's lane (200) is not the lowest lane (6)
    scores[0, 2, 1030] = nan  # in the second 1024-column block
    scores[0, 3, width - 1] = nan  # the last column
    scores[0, 4, :] = nan  # all NaN: the first column
    scores[0, 5, 7] = nan  # a row that does not move
    zero = torch.zeros(rows, dtype=torch.float64)
    affine = SamplerAffine(zero + 1, zero, zero + 1, zero.long() - 1, zero, zero, zero + 1)
    active = torch.tensor([True, True, True, True, True, False])
    row_keys = keys(rows)
    got = race_triton(scores, start, width, row_keys, *pack_affine(affine), active)
    want = race(scores, start, width, row_keys, affine, active, fused=False)
    first_nan = torch.tensor([-1, 200, 1030, width - 1, 0, -1])
    no_nan = race(scores[:, :1], start, width, row_keys[:1], affine, active[:1], fused=False)
    expected = torch.cat([no_nan[1], first_nan[1:5] + start, torch.tensor([-1])])
    for label, (value, index) in (("kernel", got), ("torch", want)):
        assert torch.equal(index, expected), f"{label}: winners {index.tolist()}"
        assert bool(value[1:5].isnan().all()) and bool(value[0].isfinite()), label
        assert value[5] == float("-inf"), label
    assert_same_race((got[0][:1], got[1][:1]), (want[0][:1], want[1][:1]), "row without NaN")
