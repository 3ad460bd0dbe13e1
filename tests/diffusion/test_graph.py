"""Graphs against brute force on a tiny vocabulary: Q, exp(sigma Q), forward sampling,
staggered score, reverse rates."""

import pytest
import torch

from sedd_megatron.diffusion import get_graph

from .exact import rate_matrix

GRAPHS = [("absorb", 5), ("uniform", 6)]
SIGMAS = [1e-5, 0.03, 0.7, 4.0]


@pytest.fixture(params=GRAPHS, ids=lambda p: p[0])
def graph(request):
    return get_graph(*request.param)


def test_dims_and_rate_matrix(graph):
    q = rate_matrix(graph)
    assert graph.dim == (graph.num_tokens + 1 if graph.absorb else graph.num_tokens)
    torch.testing.assert_close(q.sum(0), torch.zeros(graph.dim, dtype=torch.float64))
    off = q - torch.diag(q.diagonal())
    assert (off >= 0).all() and (q.diagonal() <= 0).all()
    ids = torch.arange(graph.dim)
    torch.testing.assert_close(graph.transp_rate(ids, dtype=torch.float64), q)
    if graph.absorb:  # MASK absorbs, every token leaks to MASK at rate 1
        assert (q[:, -1] == 0).all() and (q[-1, :-1] == 1).all()
    else:
        torch.testing.assert_close(q, torch.full_like(q, 1 / graph.dim) - torch.eye(graph.dim))


@pytest.mark.parametrize("sigma", SIGMAS)
def test_transitions_are_matrix_exponentials(graph, sigma):
    ids = torch.arange(graph.dim)
    sig = torch.full((graph.dim,), sigma, dtype=torch.float64)
    expected = torch.linalg.matrix_exp(sigma * rate_matrix(graph))  # [y, x] = p(x_t = y | x_0 = x)
    torch.testing.assert_close(graph.transition(ids, sig).T, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(graph.transp_transition(ids, sig), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("sigma", [0.05, 0.7])
def test_sample_transition_frequencies(graph, sigma):
    n = 200_000
    g = torch.Generator().manual_seed(1)
    expected = torch.linalg.matrix_exp(sigma * rate_matrix(graph))
    for x0 in range(graph.num_tokens):
        x = torch.full((n, 1), x0)
        xt = graph.sample_transition(x, torch.full((n, 1), sigma), generator=g)
        freq = torch.bincount(xt.flatten(), minlength=graph.dim).double() / n
        p = expected[:, x0]
        # 5 standard errors of a binomial proportion
        assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-12).all(), (freq, p)


def test_staggered_score_is_inverse_kernel(graph):
    """staggered_score(s, dsigma) = exp(-dsigma Q) s (applied along the vocabulary)."""
    g = torch.Generator().manual_seed(0)
    s = torch.rand(3, 4, graph.dim, dtype=torch.float64, generator=g)
    dsigma = torch.tensor([0.01, 0.3, 2.0], dtype=torch.float64)
    out = graph.staggered_score(s, dsigma[:, None])
    for b in range(3):
        kernel = torch.linalg.matrix_exp(-dsigma[b] * rate_matrix(graph))
        torch.testing.assert_close(out[b], s[b] @ kernel.T)


def test_reverse_rate(graph):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, graph.dim, (4, 7), generator=g)
    s = torch.rand(4, 7, graph.dim, dtype=torch.float64, generator=g)
    r = graph.reverse_rate(x, s)
    q = rate_matrix(graph)
    expected = q[x] * s  # Q(x, y) s_y
    expected.scatter_(-1, x[..., None], 0.0)
    expected.scatter_(-1, x[..., None], -expected.sum(-1, keepdim=True))
    torch.testing.assert_close(r, expected)
    torch.testing.assert_close(r.sum(-1), torch.zeros(4, 7, dtype=torch.float64))


def test_limit_distribution(graph):
    g = torch.Generator().manual_seed(0)
    x = graph.sample_limit(50, 40, generator=g)
    assert x.shape == (50, 40) and x.dtype == torch.long
    if graph.absorb:
        assert (x == graph.dim - 1).all()
    else:
        assert set(x.unique().tolist()) == set(range(graph.dim))


def test_per_row_generators_forward_process(graph):
    """With one generator per row, a row's draws do not depend on the other rows."""
    x0 = torch.randint(0, graph.num_tokens, (3, 64))
    sigma = torch.tensor([[0.2], [1.0], [3.0]])
    full = graph.sample_transition(x0, sigma, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    one = graph.sample_transition(x0[1:2], sigma[1:2], [torch.Generator().manual_seed(2)])
    assert torch.equal(full[1:2], one)
    limit = graph.sample_limit(2, 16, generator=[torch.Generator().manual_seed(s) for s in (5, 6)])
    assert torch.equal(
        limit[1:], graph.sample_limit(1, 16, generator=[torch.Generator().manual_seed(6)])
    )


def test_get_graph_rejects_unknown():
    with pytest.raises(ValueError):
        get_graph("gaussian", 10)
