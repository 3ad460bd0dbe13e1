"""The two terms the paper drops, as the ELBO harness reports them: the [0, t_eps] term's
estimate against its exact value on an enumerable model (all V^L states, quadrature over the
total noise), and the complete bound's bookkeeping, determinism and independence of the main
term's draws."""

import math

import numpy as np
import pytest
import torch

from sedd_megatron.diffusion import get_graph, get_noise
from sedd_megatron.evaluation import evaluate_elbo
from tests.diffusion.exact import SequenceModel

from .test_confidence import ContextFreeScorer

EPS = 1e-3


class EnumerableScorer:
    """A ScoreModel over a tiny vocabulary whose score is the exact concrete score of a random
    distribution over the V^L sequences (tests/diffusion/exact.py), evaluated in float64."""

    reports, dp_rank, dp_size = True, 0, 1

    def __init__(self, graph_name, noise_name, tokens, length, seed=3):
        self.graph, self.noise = get_graph(graph_name, tokens), get_noise(noise_name)
        self.num_tokens, self.seq_length = tokens, length
        self.exact = SequenceModel(self.graph, length, seed=seed)

    def score_entropy(self, x_t, sigma, x0):
        sigma = sigma.double()
        log_score = self.exact.score_fn(x_t, sigma)
        return self.graph.score_entropy(log_score, sigma[:, None], x_t, x0)

    def clean_blocks(self) -> torch.Tensor:
        return self.exact.states[self.exact.clean]

    def tail_by_quadrature(self, sigma_eps: float, nodes: int = 48) -> torch.Tensor:
        """int_0^{sigma_eps} sum_{x_t} p_{sigma|0}(x_t | x0) sum_l SE_l(x_t, x0, sigma) d sigma
        for every clean x0: x_t enumerated, Gauss-Legendre in s with sigma = sigma_eps s^2."""
        m, graph = self.exact, self.graph
        clean, states = m.clean, m.states
        u, w = np.polynomial.legendre.leggauss(nodes)
        s = (u + 1) / 2
        total = torch.zeros(len(clean), dtype=torch.float64)
        x0 = states[clean].repeat_interleave(len(states), 0)
        x_t = states.repeat(len(clean), 1)
        for s_j, w_j in zip(s, w, strict=True):
            sigma = sigma_eps * s_j**2
            weight = w_j / 2 * 2 * sigma_eps * s_j  # ds = du / 2, d sigma = 2 sigma_eps s ds
            kernel = m.kernel(sigma)[:, clean]  # [x_t, x0]
            sig = torch.full((len(x0), 1), sigma, dtype=torch.float64)
            se = graph.score_entropy(m.log_score(x_t, sigma), sig, x_t, x0).sum(-1)
            p = kernel.T.reshape(-1)
            per_x0 = torch.where(p > 0, p * se, torch.zeros_like(p)).reshape(len(clean), -1)
            total += weight * per_x0.sum(-1)
        return total

    def tail_by_identity(self, sigma_eps: float) -> torch.Tensor:
        """For the exact score, the same integral is -log p0(x0) - KL(p_{eps|0} || p_eps)
        (tests/diffusion/test_elbo.py)."""
        m = self.exact
        kernel = m.kernel(sigma_eps)[:, m.clean]
        marginal = (kernel * m.p0[m.clean]).sum(-1, keepdim=True)
        kl = torch.where(kernel > 0, kernel * (kernel / marginal).log(), torch.zeros_like(kernel))
        return -m.p0[m.clean].log() - kl.sum(0)


@pytest.mark.parametrize(
    "graph_name, noise_name", [("absorb", "loglinear"), ("uniform", "geometric")]
)
def test_tail_estimate_matches_enumeration(graph_name, noise_name):
    scorer = EnumerableScorer(graph_name, noise_name, tokens=3, length=2)
    blocks = scorer.clean_blocks()  # every clean sequence is a block
    sigma_eps = float(scorer.noise(torch.tensor(EPS, dtype=torch.float64))[0])
    exact = scorer.tail_by_quadrature(sigma_eps)
    # the quadrature is right: the exact score's identity gives the same values
    torch.testing.assert_close(exact, scorer.tail_by_identity(sigma_eps), rtol=1e-6, atol=1e-12)
    truth = float(exact.sum()) / blocks.numel()

    result = evaluate_elbo(
        scorer, blocks, num_t_samples=2, tail_samples=40, batch_size=64, progress=False, seed=5
    )
    tail = result.summary()["tail"]
    assert tail["evaluations"] == 40 * len(blocks) and result.settings["tail"]["design"] == "tail"
    lo, hi = tail["ci_nats_per_token"]
    assert lo <= truth <= hi, (truth, tail)
    # the interval is tight enough to reject a factor-2 error either way
    for wrong in (2 * truth, truth / 2):
        assert not lo <= wrong <= hi, (wrong, tail)
    # every block's own estimate is near its exact value too
    for block, value in zip(result.tail, exact, strict=True):
        reps = block.replicate_estimates
        assert abs(reps.mean() - float(value)) < 5 * reps.std(ddof=1) / math.sqrt(reps.size) + 1e-9


def _run(scorer, blocks, **kwargs):
    args = dict(design="importance", num_t_samples=8, replicates=4, progress=False, seed=2)
    return evaluate_elbo(scorer, blocks, **{**args, **kwargs})


def test_complete_bound_bookkeeping():
    scorer = ContextFreeScorer(num_tokens=12, length=16)
    blocks = torch.randint(0, 12, (3, 16), generator=torch.Generator().manual_seed(0))
    result = _run(scorer, blocks, tail_samples=6, batch_size=5)
    s = result.summary()
    sigma_1 = -math.log(EPS)  # loglinear: sigma_bar(1) = -log(eps)
    prior = s["prior"]["nats_per_token"]
    assert prior == pytest.approx(math.exp(-sigma_1) * math.log(12), rel=1e-9)
    assert s["prior"]["sigma_total"] == pytest.approx(sigma_1, rel=1e-12)
    tail, complete = s["tail"], s["complete"]
    expected = (1 - EPS) * s["nats_per_token"] + tail["nats_per_token"] + prior
    assert complete["nats_per_token"] == pytest.approx(expected, rel=1e-12)
    assert complete["bits_per_token"] == pytest.approx(expected / math.log(2), rel=1e-12)
    assert complete["ppl_bound"] == pytest.approx(math.exp(expected), rel=1e-12)
    variance = ((1 - EPS) * s["stderr_nats_per_token"]) ** 2 + tail["stderr_nats_per_token"] ** 2
    assert complete["stderr_nats_per_token"] == pytest.approx(math.sqrt(variance), rel=1e-9)
    lo, hi = complete["ci_nats_per_token"]
    assert lo < complete["nats_per_token"] < hi
    assert complete["evaluations"] == s["evaluations"] + tail["evaluations"] == 3 * (8 + 6)
    assert set(complete["terms_nats_per_token"]) == {"interval", "tail", "prior"}
    # the tail is about eps x the cross-entropy per token (a constant-CE predictor's integrand)
    assert 0 < tail["nats_per_token"] < 0.05 * s["nats_per_token"]
    # JSON: the tail's blocks beside the main ones
    doc = result.to_json()
    assert [b["block"] for b in doc["tail_blocks"]] == [0, 1, 2]
    assert doc["result"]["complete"] == complete


def test_tail_draws_are_a_separate_stream():
    """The main term's draws are the same with or without the tail (and for any tail size);
    the tail's draws do not depend on the batch size or on the main term's design."""
    scorer = ContextFreeScorer(num_tokens=12, length=16)
    blocks = torch.randint(0, 12, (3, 16), generator=torch.Generator().manual_seed(1))
    off = _run(scorer, blocks, tail_samples=0, batch_size=4)
    on = _run(scorer, blocks, tail_samples=4, batch_size=7)
    other = _run(scorer, blocks, tail_samples=4, batch_size=64, design="mc", replicates=None)
    for a, b in zip(off.blocks, on.blocks, strict=True):
        assert (a.t == b.t).all() and (a.count == b.count).all() and (a.weight == b.weight).all()
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)
    for a, b in zip(on.tail, other.tail, strict=True):
        assert (a.t == b.t).all() and (a.count == b.count).all() and (a.weight == b.weight).all()
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)
    summary = off.summary()
    assert summary["tail"] is None and summary["complete"] is None and off.tail is None
    assert summary["prior"]["nats_per_token"] > 0 and off.settings["tail"] is None
    assert "tail_blocks" not in off.to_json()
    # the default tail: 2% of the main evaluations, at least two replicates
    default = _run(scorer, blocks[:1])
    assert default.summary()["tail"]["evaluations"] == 2
