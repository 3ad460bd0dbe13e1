"""Categorical sampling: exact replay of the reference draw, accuracy of the float64 race at tiny
masses (where the reference's float32 draw is biased), per-row generators."""

import functools

import pytest
import torch
from scipy import stats

from sedd_megatron.diffusion import exponential_noise, sample_categorical

from .conformance_utils import CASES, load_expected, num_draws


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c))
def test_reference_mode_replays_recorded_draws(conformance_dir, case):
    """set_rng_state(rng_state) + float32 draw on the recorded weights reproduces every draw, and
    consumes exactly the reference's random numbers (the next recorded state follows)."""
    data = load_expected(conformance_dir, *case)
    saved = torch.get_rng_state()
    try:
        for i in range(num_draws(data)):
            torch.set_rng_state(data[f"sample_calls.{i}.rng_state"])
            out = sample_categorical(data[f"sample_calls.{i}.probs"], dtype=torch.float32)
            assert torch.equal(out, data[f"sample_calls.{i}.out"]), f"draw {i}"
            if i + 1 < num_draws(data):
                assert torch.equal(torch.get_rng_state(), data[f"sample_calls.{i + 1}.rng_state"])
    finally:
        torch.set_rng_state(saved)


def test_unnormalised_and_negative_weights():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[-0.5, 0.0, 2.0, 6.0]]).expand(40_000, 4)
    for dtype in (torch.float32, torch.float64):
        x = sample_categorical(p, dtype=dtype, generator=g)
        counts = torch.bincount(x, minlength=4)
        assert counts[0] == 0 and counts[1] == 0
        assert stats.binomtest(int(counts[3]), 40_000, 0.75).pvalue > 1e-3


def test_float64_matches_moderate_distribution():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.02, 0.009, 0.001], dtype=torch.float64)
    n = 200_000
    x = sample_categorical(3.7 * p.expand(n, -1), generator=g)  # unnormalised on purpose
    counts = torch.bincount(x, minlength=len(p)).numpy()
    assert stats.chisquare(counts, n * p.numpy()).pvalue > 1e-3


# The law of a draw is a deterministic function of the uniform grid, so the probability that
# a category of mass q beats one of mass 1 is computed exactly instead of estimated from ~1/q
# draws (1e9 draws at q = 1e-7 would be needed for a sampling test with power).


@functools.cache
def float32_head_values() -> torch.Tensor:
    return 1 / exponential_noise(torch.arange(2**24, dtype=torch.float64).mul(2.0**-24).float())


def float32_win_probability(q: float) -> float:
    """Exact P(argmax [1, q] / E = 1) for the reference draw, over all 2^24 float32 uniforms
    u = k 2^-24 that torch.rand(float32) produces: count the pairs (E_head, E_tail) for which the
    float32 comparison q / E_tail > 1 / E_head holds. Only the 4096 smallest E_tail can win
    (checked).
    """
    head = float32_head_values()
    u_tail = torch.arange(2**24 - 4096, 2**24, dtype=torch.float64).mul(2.0**-24).float()
    tail = (torch.tensor(q, dtype=torch.float32) / exponential_noise(u_tail)).sort().values
    assert tail[0] < head.min()  # the other 2^24 - 4096 tail values never win
    beaten = len(tail) - torch.searchsorted(tail, head, right=True)  # tail values > head value
    return beaten.double().sum().item() / 2.0**48


def float64_cdf(c: float) -> float:
    """Exact P(E < c) for the float64 race noise: bisect the 53-bit grid of torch.rand(float64)."""
    lo, hi = 0, 2**53  # E is increasing in u = k 2^-53
    while lo < hi:
        mid = (lo + hi) // 2
        if exponential_noise(torch.tensor(mid * 2.0**-53, dtype=torch.float64)).item() < c:
            lo = mid + 1
        else:
            hi = mid
    return lo / 2.0**53


def test_float32_reference_draw_undersamples_tiny_masses():
    """Zheng et al. (2024): float32 Gumbel noise truncates. A category of mass q against mass 1 is
    drawn with probability q/(1+q); the reference draw gives ~0.73 q at 1e-7, ~0.015 q at 1e-8 and
    never at 1e-9 (E cannot go below 2^-24 nor above ~23)."""
    ratio = {q: float32_win_probability(q) / (q / (1 + q)) for q in (1e-7, 1e-8, 1e-9)}
    assert 0.6 < ratio[1e-7] < 0.85
    assert ratio[1e-8] < 0.05
    assert ratio[1e-9] == 0.0


@pytest.mark.parametrize("c", [1e-7, 3e-8, 1e-8, 1e-9, 1e-10])
def test_float64_race_noise_is_exact_at_tiny_values(c):
    """P(E < c) = 1 - e^{-c} to 1e-6 relative for the float64 noise (so a mass q is drawn at rate
    E_head[1 - exp(-q E_head)] = q/(1+q), to the same accuracy); float32 is visibly off."""
    exact = -torch.expm1(torch.tensor(-c, dtype=torch.float64)).item()
    assert float64_cdf(c) == pytest.approx(exact, rel=1e-6)
    u32 = torch.arange(2**24 - 64, 2**24, dtype=torch.float64).mul(2.0**-24).float()
    float32_cdf = (exponential_noise(u32) < c).sum().item() / 2.0**24  # smallest E values
    assert abs(float32_cdf - exact) > 0.25 * exact


def test_samplers_use_the_race_noise():
    """sample_categorical's draw is argmax p / exponential_noise(rand) in the chosen dtype."""
    p = torch.rand(3, 5, 17, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        x = sample_categorical(p, dtype=dtype, generator=torch.Generator().manual_seed(4))
        u = torch.rand(p.shape, dtype=dtype, generator=torch.Generator().manual_seed(4))
        assert torch.equal(x, (p.to(dtype) / exponential_noise(u)).argmax(-1))


def test_float64_empirical_small_masses():
    """End to end at a size a test can afford: 1e5 categories of mass 1e-5 against one of mass 1
    (true tail probability 1/2), 100 rows; float64 agrees with 1/2."""
    n_rows, k, q = 100, 10**5, 1e-5
    p = torch.full((n_rows, k + 1), q, dtype=torch.float64)
    p[:, 0] = 1.0
    g = torch.Generator().manual_seed(0)
    tail = int((sample_categorical(p, generator=g) > 0).sum())
    assert stats.binomtest(tail, n_rows, 0.5).pvalue > 1e-3


def test_per_row_generators_independent_of_batch():
    p = torch.rand(5, 7, 33)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    for dtype in (torch.float32, torch.float64):
        full = sample_categorical(p, dtype, gens(range(5)))
        sub = sample_categorical(p[[3, 1]], dtype, gens([3, 1]))
        assert torch.equal(full[[3, 1]], sub)
    with pytest.raises(ValueError):
        sample_categorical(p, generator=gens(range(4)))
