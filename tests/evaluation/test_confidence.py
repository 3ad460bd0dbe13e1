"""The confidence interval covers the truth about 95% of the time, for a synthetic integrand and
for the full ELBO pipeline on a context-free score model whose ELBO is known in closed form."""

import math

import numpy as np
import pytest
import torch

from sedd_megatron.diffusion import get_graph, get_noise
from sedd_megatron.evaluation import combine_replicates, evaluate_elbo
from sedd_megatron.evaluation.stats import t_quantile


def test_t_quantile():
    assert t_quantile(0.95, math.inf) == pytest.approx(1.959964, abs=1e-5)
    assert t_quantile(0.95, 4) == pytest.approx(2.776445, abs=1e-4)


def test_coverage_synthetic():
    """Skewed per-draw values (exponential, mean 1), 3 blocks x 8 replicates: ~95% coverage."""
    rng = np.random.default_rng(0)
    hits, reps = 0, 2000
    for _ in range(reps):
        blocks = [rng.exponential(scale=s, size=(8, 4)).mean(1) for s in (1.0, 2.0, 0.5)]
        est = combine_replicates(blocks)
        hits += abs(est.total - 3.5) <= est.half_width(0.95)
    assert 0.92 <= hits / reps <= 0.975


class ContextFreeScorer:
    """Absorbing-graph score s_y = r p(y) e^{c sigma} (r = 1/(e^sigma - 1)), context-free.

    Per masked token SE = r (e^{c sigma} - 1 - c sigma) - r log p(x0), so
    ELBO = 1/(1-eps) int_eps^1 sigma' e^{-sigma} [L (e^{c sigma} - 1 - c sigma)
           - sum_l log p(x0_l)] dt.
    """

    reports, dp_rank, dp_size = True, 0, 1

    def __init__(self, num_tokens=12, length=16, c=0.3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.graph = get_graph("absorb", num_tokens)
        self.noise = get_noise("loglinear")
        self.num_tokens, self.seq_length, self.c = num_tokens, length, c
        self.logp = torch.log_softmax(torch.randn(num_tokens, generator=g, dtype=torch.float64), 0)

    def score_entropy(self, x_t, sigma, x0):
        sigma = sigma.double()[:, None]
        r_log = -torch.log(torch.expm1(sigma))
        log_score = (r_log + self.c * sigma)[..., None] + self.logp
        log_score = torch.cat([log_score, torch.zeros_like(log_score[..., :1])], -1)
        log_score = log_score.expand(*x_t.shape, -1)
        return self.graph.score_entropy(log_score, sigma, x_t, x0).float()

    def exact(self, x0, eps=1e-3):
        t = torch.linspace(eps, 1, 400001, dtype=torch.float64)
        sigma, dsigma = self.noise(t)
        per_token = self.c * sigma
        misfit = self.seq_length * (torch.expm1(per_token) - per_token)
        integrand = dsigma * torch.exp(-sigma) * (misfit - self.logp[x0].sum())
        integral = torch.trapezoid(integrand, t)
        return integral.item() / (1 - eps)


@pytest.mark.parametrize("design, samples, replicates", [("mc", 8, None), ("importance", 8, 4)])
def test_coverage_elbo_pipeline(design, samples, replicates):
    scorer = ContextFreeScorer()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, scorer.num_tokens, (2, scorer.seq_length), generator=gen)
    truth = sum(scorer.exact(x0[i]) for i in range(2)) / x0.numel()
    hits, reps = 0, 150
    for seed in range(reps):
        s = evaluate_elbo(
            scorer,
            x0,
            design=design,
            num_t_samples=samples,
            replicates=replicates,
            batch_size=64,
            progress=False,
            seed=seed,
            tail_samples=0,  # the main term's interval (the tail's: test_elbo_complete.py)
        ).summary()
        lo, hi = s["ci_nats_per_token"]
        hits += lo <= truth <= hi
    assert 0.88 <= hits / reps <= 0.995, hits / reps
