"""Brute force: with the exact score, the loss integrated over t in [eps, 1] is the negative
log-likelihood minus the two terms the paper drops, each computed exactly by enumeration.

For the forward process started at x0 and the exact score of p_sigma, the DWDSE integrand f
(with the same weight as the loss, sigma_bar' dt = dsigma) satisfies
    int_{sigma_a}^{sigma_b} f(sigma) dsigma = KL(p_{a|0}(.|x0) || p_a) - KL(p_{b|0}(.|x0) || p_b),
and KL -> -log p0(x0) as sigma -> 0. Hence
    -log p0(x0) = int_eps^1 loss dt + T_eps + T_prior,
    T_eps   = -log p0(x0) - KL(p_{eps|0} || p_eps)   (the [0, eps] interval),
    T_prior = KL(p_{1|0}(.|x0) || p_1)               (the prior term, with the true p_1 as prior).
"""

import numpy as np
import pytest
import torch

from sedd_megatron.diffusion import get_graph, get_noise, score_entropy_loss

from .exact import SequenceModel

SETUPS = [
    ("absorb", "loglinear", 3, 2),
    ("uniform", "geometric", 4, 2),
    ("uniform", "geometric", 3, 3),
]


def inverse_time(noise_name, noise, sigma):
    """t with sigma_bar(t) = sigma."""
    if noise_name == "loglinear":
        return -torch.expm1(-sigma) / (1 - noise.eps)
    lo, hi = np.log(noise.sigma_min), np.log(noise.sigma_max)
    return (sigma.log() - lo) / (hi - lo)


def kl_to_marginal(model, sigma):
    """KL(p_{sigma|0}(. | x0) || p_sigma) for every clean x0 (indexed like model.clean)."""
    kernel = model.kernel(sigma)[:, model.clean]  # [x_t, x0]
    marginal = (kernel * model.p0[model.clean]).sum(-1, keepdim=True)
    terms = torch.where(kernel > 0, kernel * (kernel / marginal).log(), torch.zeros_like(kernel))
    return terms.sum(0)


def integrated_loss(model, graph, noise_name, noise, sigma_a, sigma_b, nodes=64):
    """int over t with sigma_bar(t) in [sigma_a, sigma_b] of E_{x_t|x0} loss(x0, t, x_t), by
    Gauss-Legendre in u = log sigma (dt = du sigma / sigma_bar'(t)), x_t enumerated exactly."""
    u, w = np.polynomial.legendre.leggauss(nodes)
    la, lb = np.log(sigma_a), np.log(sigma_b)
    sigmas = torch.tensor(np.exp(la + (u + 1) / 2 * (lb - la)))
    weights = torch.tensor(w * (lb - la) / 2)
    clean, states = model.clean, model.states
    total = torch.zeros(len(clean), dtype=torch.float64)
    for sigma, weight in zip(sigmas, weights, strict=True):
        kernel = model.kernel(float(sigma))[:, clean]  # p(x_t | x0)
        x0 = states[clean].repeat_interleave(len(states), 0)
        x_t = states.repeat(len(clean), 1)
        t = inverse_time(noise_name, noise, sigma).expand(len(x0))
        loss = score_entropy_loss(model.score_fn, graph, noise, x0, t, x_t)
        dt_du = sigma / noise(t[:1])[1]
        p = kernel.T.reshape(-1)
        per_x0 = torch.where(p > 0, p * loss, torch.zeros_like(p)).reshape(len(clean), -1).sum(-1)
        total += weight * dt_du * per_x0
    return total


@pytest.mark.parametrize("setup", SETUPS, ids=lambda s: f"{s[0]}-N{s[2]}-L{s[3]}")
def test_integrated_loss_is_nll_minus_dropped_terms(setup):
    name, noise_name, tokens, length = setup
    graph, noise = get_graph(name, tokens), get_noise(noise_name)
    model = SequenceModel(graph, length, seed=2)
    eps = 1e-3
    sigma_eps = float(noise(torch.tensor(eps, dtype=torch.float64))[0])
    sigma_1 = float(noise(torch.tensor(1.0, dtype=torch.float64))[0])
    nll = -model.p0[model.clean].log()

    main = integrated_loss(model, graph, noise_name, noise, sigma_eps, sigma_1)
    kl_eps, kl_1 = kl_to_marginal(model, sigma_eps), kl_to_marginal(model, sigma_1)
    t_eps, t_prior = nll - kl_eps, kl_1
    torch.testing.assert_close(main + t_eps + t_prior, nll, rtol=0, atol=1e-8)

    # T_eps independently: the same quadrature on [1e-9, sigma(eps)]
    # (KL at sigma = 1e-9 is -log p0 to ~1e-8)
    head = integrated_loss(model, graph, noise_name, noise, 1e-9, sigma_eps)
    torch.testing.assert_close(head, t_eps, rtol=0, atol=1e-6)

    # the dropped terms are small and nonnegative: here at most a few percent of the NLL
    assert (t_eps >= -1e-12).all() and (t_prior >= -1e-12).all()
    assert (t_eps <= 0.03 * nll).all() and (t_prior <= 0.03 * nll).all(), (t_eps, t_prior, nll)
    # averaged over p0 the bound has the entropy of p0
    p0 = model.p0[model.clean]
    entropy = (p0 * nll).sum()
    torch.testing.assert_close((p0 * (main + t_eps + t_prior)).sum(), entropy, rtol=0, atol=1e-8)
