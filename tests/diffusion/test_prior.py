"""The ELBO's prior term, Graph.prior_kl, against brute force on a tiny vocabulary: p_{1|0} as
columns of expm(sigma Q) built from the rate matrix, p_base as their average over the data
tokens, and the KL by enumeration, for both graphs and both noise schedules."""

import math

import pytest
import torch

from sedd_megatron.diffusion import get_graph, get_noise

from .exact import rate_matrix

SETUPS = [(g, n) for g in ("absorb", "uniform") for n in ("loglinear", "geometric")]


def brute_force_kl(graph, sigma: float) -> torch.Tensor:
    """KL(p_{sigma|0}(.|x0) || p_base) for every data token x0, by enumeration."""
    kernel = torch.linalg.matrix_exp(sigma * rate_matrix(graph))  # [x_t, x0]
    columns = kernel[:, : graph.num_tokens]  # the data tokens
    base = columns.mean(1, keepdim=True)
    terms = torch.where(columns > 0, columns * (columns / base).log(), torch.zeros_like(columns))
    return terms.sum(0)


@pytest.mark.parametrize("graph_name, noise_name", SETUPS)
@pytest.mark.parametrize("tokens", [2, 5])
def test_prior_kl_matches_brute_force(graph_name, noise_name, tokens):
    graph = get_graph(graph_name, tokens)
    noise = get_noise(noise_name)
    sigma_1 = float(noise(torch.tensor(1.0, dtype=torch.float64))[0])
    for sigma in (sigma_1, 0.05, 0.7, 3.0):
        expected = brute_force_kl(graph, sigma)
        # the same for every data token (the symmetry the harness relies on)
        torch.testing.assert_close(
            expected, expected[:1].expand_as(expected), rtol=1e-9, atol=1e-14
        )
        got = graph.prior_kl(sigma)
        assert got.dtype == torch.float64 and got.shape == ()
        assert float(got) == pytest.approx(float(expected[0]), rel=1e-9, abs=1e-15)
    # vectorised over sigma
    sigmas = torch.tensor([0.05, 0.7, 3.0], dtype=torch.float64)
    expected = torch.stack([brute_force_kl(graph, float(s))[0] for s in sigmas])
    torch.testing.assert_close(graph.prior_kl(sigmas), expected, rtol=1e-9, atol=1e-15)


def test_absorb_prior_is_mask_with_leakage():
    """Absorb: KL = e^{-sigma} log N, not the infinite KL to a delta at MASK, and not the KL to
    another base (e.g. uniform over all states), so the brute-force check can tell them apart."""
    graph, sigma = get_graph("absorb", 5), 6.907755278982137  # sigma_bar(1) of loglinear
    assert float(graph.prior_kl(sigma)) == pytest.approx(math.exp(-sigma) * math.log(5), rel=1e-12)
    column = torch.linalg.matrix_exp(sigma * rate_matrix(graph))[:, 0]
    assert column[0] > 0  # p_{1|0} keeps mass on x0: a delta at MASK gives KL = inf
    uniform = torch.full_like(column, 1 / graph.dim)
    other = float(torch.where(column > 0, column * (column / uniform).log(), 0.0).sum())
    assert abs(other - float(graph.prior_kl(sigma))) > 0.1


def test_uniform_prior_vanishes_at_large_noise():
    graph = get_graph("uniform", 50257)
    assert 0 <= float(graph.prior_kl(20.0)) < 1e-10  # geometric sigma_max = 20
    assert float(graph.prior_kl(0.0)) == pytest.approx(math.log(50257), rel=1e-12)
