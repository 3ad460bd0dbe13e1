"""Graphs against brute force on a tiny vocabulary: Q, exp(sigma Q), forward sampling,
staggered score, reverse rates, and the graph-specific pieces other packages use (MASK id,
moving positions, limit draw, corruption, sampler weights, importance weights), plus a scan
that no code outside sedd_megatron/diffusion branches on the graph kind."""

import ast
import math
from pathlib import Path

import pytest
import torch

from sedd_megatron.diffusion import (
    GRAPHS,
    Graph,
    analytic_probs,
    denoiser_probs,
    euler_probs,
    get_graph,
    get_noise,
    graph_class,
)

from .exact import rate_matrix

CASES = [("absorb", 5), ("uniform", 6)]
SIGMAS = [1e-5, 0.03, 0.7, 4.0]


@pytest.fixture(params=CASES, ids=lambda p: p[0])
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


# --- the graph-specific pieces that callers outside sedd_megatron.diffusion use -------------


def _offdiagonal(q: torch.Tensor) -> torch.Tensor:
    return q - torch.diag(q.diagonal())


def test_graph_is_an_abstract_base_and_registry():
    with pytest.raises(TypeError):
        Graph()  # abstract

    class Partial(Graph):  # a graph that leaves out the graph-specific pieces
        name = "partial"

    with pytest.raises(TypeError):
        Partial(4)
    assert set(GRAPHS) == {"absorb", "uniform"}
    for name, cls in GRAPHS.items():
        assert issubclass(cls, Graph) and cls.name == name and graph_class(name) is cls
        assert type(get_graph(name, 7)) is cls and get_graph(name, 7).num_tokens == 7
        get_noise(cls.default_noise)  # a known schedule
        assert isinstance(cls.sigma_scaling, bool) and isinstance(cls.clean_loss_is_zero, bool)
    with pytest.raises(ValueError, match="unknown graph 'gaussian'.*'absorb' or 'uniform'"):
        graph_class("gaussian")


def test_mask_id_is_the_absorbing_state(graph):
    """MASK = the one state without outgoing rate (a zero column of Q); None if there is none.
    The denoiser's columns (num_tokens) are the other states, and the MASK (if any) is last."""
    q = rate_matrix(graph)
    assert q.shape == (graph.dim, graph.dim)
    absorbing = (q == 0).all(0).nonzero().flatten().tolist()
    assert absorbing == ([] if graph.mask_id is None else [graph.mask_id])
    assert graph.dim - len(absorbing) == graph.num_tokens
    assert all(m >= graph.num_tokens for m in absorbing)
    assert graph.sigma_scaling == (graph.mask_id is not None)


def test_moving_is_where_the_reverse_process_can_jump(graph):
    """x can move iff some y != x has Q(x, y) > 0 (reverse rate Q(x, y) s_y out of x)."""
    q = rate_matrix(graph)
    ids = torch.arange(graph.dim)
    expected = (_offdiagonal(q)[ids] > 0).any(-1)
    x = ids.repeat(3, 1)
    got = graph.moving(x)
    assert got.dtype == torch.bool and got.shape == x.shape
    assert torch.equal(got, expected.repeat(3, 1))


@pytest.mark.parametrize("offset", [0, 2, 4, 9])
def test_excluded_column_matches_score_entropy_sums(graph, offset):
    """excluded_column is the column exp_sum leaves out for every token (off-shard included);
    brute-force exp_sum over a shard at ``offset``."""
    g = torch.Generator().manual_seed(offset)
    width = 3
    log_score = torch.randn(2, 5, width, dtype=torch.float64, generator=g)
    x_t = torch.randint(0, graph.dim, (2, 5), generator=g)
    x0 = torch.randint(0, graph.num_tokens, (2, 5), generator=g)
    stats = graph.score_entropy_stats(log_score, x_t, x0, vocab_offset=offset)
    col = graph.excluded_column(offset)
    assert col == (None if graph.mask_id is None else graph.mask_id - offset)
    expected = torch.zeros(2, 5, dtype=torch.float64)
    for b in range(2):
        for pos in range(5):
            for c in range(width):
                left_out = c == col if col is not None else offset + c == x_t[b, pos]
                if not left_out:
                    expected[b, pos] += log_score[b, pos, c].exp()
    torch.testing.assert_close(stats.exp_sum, expected, rtol=1e-12, atol=0)


def _step_case(graph, seed=0):
    """Tokens (every state), float64 log-scores with 0 at the current token, the noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(graph.dim).repeat(2)
    log_score = torch.randn(x.shape[0], graph.dim, dtype=torch.float64, generator=g)
    log_score.scatter_(-1, x[:, None], 0.0)
    return x, log_score, get_noise(graph.default_noise)


@pytest.mark.parametrize("kind", ["euler", "analytic", "denoise"])
def test_sampler_weights_are_the_predictor_weights(graph, kind):
    """sampler_weights (full vocabulary, and assembled from slices) are proportional, row by
    row, to the full-vocabulary predictors of ``sedd_megatron.diffusion.sampling``."""
    x, log_score, noise = _step_case(graph)
    t = torch.full((1, 1), 0.6, dtype=torch.float64)  # one sequence of R tokens
    dt = 0.05
    score_fn = lambda _x, _sigma: log_score[None]  # noqa: E731
    sigma, rate = noise(t)
    if kind == "euler":
        probs = euler_probs(graph, noise, score_fn, x[None], t, dt)[0]
        params = dict(coef=dt * float(rate))
    elif kind == "analytic":
        probs = analytic_probs(graph, noise, score_fn, x[None], t, dt)[0]
        params = dict(exponent=float(sigma - noise(t - dt)[0]))
    else:
        probs = denoiser_probs(graph, noise, score_fn, x[None], t)[0]
        params = dict(exponent=float(sigma))
    columns = probs.shape[-1]
    assert columns == (graph.num_tokens if kind == "denoise" else graph.dim)
    s = log_score.exp()
    # the sums S (MASK left out) / T (all columns), written out
    total = s[:, : graph.num_tokens].sum(-1) if graph.absorb else s.sum(-1)
    w = graph.sampler_weights(s[:, :columns].clone(), x, 0, total, kind, **params)
    assert w.dtype == torch.float64 and w.shape == probs.shape
    torch.testing.assert_close(w / w.sum(-1, keepdim=True), probs / probs.sum(-1, keepdim=True))
    cut = 2
    parts = [
        graph.sampler_weights(s[:, a:b].clone(), x, a, total, kind, **params)
        for a, b in ((0, cut), (cut, columns))
    ]
    torch.testing.assert_close(torch.cat(parts, -1), w, rtol=0, atol=0)


def test_limit_draw(graph):
    """The t = 1 state from keyed rows: the limiting law's support, each row its own key."""
    calls = []

    def randint(row, high):
        calls.append((row, high))
        g = torch.Generator().manual_seed(100 + row)
        return torch.randint(0, high, (300,), generator=g)

    x = graph.limit_draw(3, 300, randint)
    assert x.shape == (3, 300) and x.dtype == torch.long
    limit = graph.transition(torch.arange(graph.dim), torch.tensor(60.0, dtype=torch.float64))
    support = set((limit[0] > 1e-12).nonzero().flatten().tolist())  # same for every x0
    if graph.mask_id is not None:
        assert calls == [] and support == {graph.mask_id}
        assert (x == graph.mask_id).all()
    else:
        assert calls == [(0, graph.dim), (1, graph.dim), (2, graph.dim)]
        assert torch.equal(x, torch.stack([randint(r, graph.dim) for r in range(3)]))
        assert set(x.unique().tolist()) == support


def test_corrupt_draws_the_limit_law_at_the_given_positions(graph):
    n = 100_000
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, graph.num_tokens, (n, 2), generator=g)
    where = torch.zeros(n, 2, dtype=torch.bool)
    where[:, 1] = True
    x = graph.corrupt(x0, where, generator=torch.Generator().manual_seed(4))
    assert torch.equal(x[:, 0], x0[:, 0])
    # the corrupted column follows the limiting law, whatever x0 was
    limit = graph.transition(torch.zeros((), dtype=torch.long), torch.tensor(60.0)).double()
    freq = torch.bincount(x[:, 1], minlength=graph.dim).double() / n
    assert ((freq - limit).abs() <= 5 * (limit * (1 - limit) / n).sqrt() + 1e-12).all()


def test_log_integrand_scale():
    """Absorb: k d/dt log q(t), q(t) = 1 - e^{-sigma_bar(t)} by autograd; uniform: the formula
    sigma'(t) (L + k log(N) / (e^sigma - 1)) in plain floats."""
    length, k = 32, torch.tensor([1.0, 5.0, 32.0], dtype=torch.float64)
    for name in GRAPHS:
        graph = get_graph(name, 11)
        noise = get_noise(graph.default_noise)
        for t0 in (0.01, 0.5, 0.97):
            t = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
            sigma, dsigma = noise(t)
            (dlogq,) = torch.autograd.grad(torch.log(-torch.expm1(-sigma)), t)
            got = graph.log_integrand_scale(sigma.detach(), dsigma.detach(), k, length).exp()
            if graph.absorb:
                expected = k * dlogq
            else:
                s, ds = float(sigma.detach()), float(dsigma.detach())
                expected = ds * (length + k * math.log(11) / math.expm1(s))
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)


def test_clean_loss_is_zero(graph):
    """The score entropy at x_t = x0 (nothing corrupted) vanishes exactly iff the flag says so."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, graph.num_tokens, (2, 6), generator=g)
    log_score = torch.randn(2, 6, graph.dim, dtype=torch.float64, generator=g)
    se = graph.score_entropy(log_score, torch.tensor([0.3, 2.0], dtype=torch.float64), x0, x0)
    assert bool((se == 0).all()) == graph.clean_loss_is_zero


# --- no graph-kind branches outside sedd_megatron/diffusion ---------------------------------

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("sedd_megatron", "tools", "benchmarks", "examples", "pretrain_sedd.py")


def _graph_kind_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of every place that asks which graph it holds."""
    names = set(GRAPHS)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "absorb":
            found.append((node.lineno, ".absorb"))
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Sub)
            and isinstance(node.left, ast.Attribute)
            and node.left.attr == "dim"
            and isinstance(node.right, ast.Constant)
            and node.right.value == 1
        ):
            found.append((node.lineno, "dim - 1 (use mask_id / num_tokens)"))
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in names for o in operands):
                found.append((node.lineno, "comparison with a graph name"))
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            if any(isinstance(e, ast.Constant) and e.value in names for e in node.elts):
                found.append((node.lineno, "a list of graph names (use GRAPHS)"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and any(
                isinstance(n, ast.Name | ast.Attribute)
                and getattr(n, "id", getattr(n, "attr", None)) in ("Absorbing", "Uniform")
                for n in ast.walk(node.args[1] if len(node.args) > 1 else node)
            )
        ):
            found.append((node.lineno, "isinstance on a graph class"))
    return found


def test_scan_flags_graph_kind_branches():
    source = (
        "if graph.absorb: pass\n"
        "m = graph.dim - 1\n"
        "ok = name == 'uniform'\n"
        "CHOICES = ('absorb', 'uniform')\n"
        "b = isinstance(g, Absorbing)\n"
        "fine = graph.dim - 2 + graph.mask_id\n"
        "f(graph='absorb')\n"
    )
    assert [line for line, _ in _graph_kind_uses(ast.parse(source))] == [1, 2, 3, 4, 5]


def test_no_graph_kind_branches_outside_diffusion():
    files = []
    for entry in SCANNED:
        path = REPO / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    diffusion = REPO / "sedd_megatron" / "diffusion"
    problems = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in files
        if diffusion not in path.parents
        for line, what in _graph_kind_uses(ast.parse(path.read_text(), str(path)))
    ]
    assert len(files) > 50
    assert not problems, "graph-kind branches outside sedd_megatron/diffusion:\n" + "\n".join(
        problems
    )
