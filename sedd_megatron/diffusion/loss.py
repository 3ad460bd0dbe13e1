"""Training loss: denoising score entropy, a one-sample Monte-Carlo estimate of the ELBO
(docs/math.md §4.1, §6.1).

    -log p_0(x0) <= int_0^1 E_{x_t ~ p_{t|0}(.|x0)} sum_l sigma_bar'(t) SE_l(x_t, sigma_bar(t)) dt
                    + KL(p_{1|0}(.|x0) || p_base)

Per sequence: t ~ U(eps, 1) drawn as (1 - eps) rand(B) + eps (eps = 1e-3, as the reference; the
[0, eps] part and the prior KL are dropped), x_t ~ p_{t|0}(.|x0),
loss = sum_l sigma_bar'(t) SE_l (a sum over positions, not a mean).
"""

from collections.abc import Callable

import torch

from .categorical import Generator, uniform
from .graph import Graph
from .noise import Noise

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, L), sigma (B,)) -> log s


def sample_t(batch_size: int, eps: float = 1e-3, device=None, generator: Generator = None):
    """t ~ U(eps, 1) per sequence, drawn as the reference: (1 - eps) * rand(B) + eps."""
    return (1 - eps) * uniform((batch_size,), device=device, generator=generator) + eps


def sequence_loss(score_entropy: torch.Tensor, dsigma: torch.Tensor) -> torch.Tensor:
    """sum_l sigma_bar'(t) SE_l: (B, L) per-token score entropy, (B,) rate -> (B,)."""
    return (dsigma.reshape(-1, 1) * score_entropy).sum(-1)


def score_entropy_loss(
    score_fn: ScoreFn,
    graph: Graph,
    noise: Noise,
    x0: torch.Tensor,
    t: torch.Tensor | None = None,
    perturbed: torch.Tensor | None = None,
    eps: float = 1e-3,
    generator: Generator = None,
) -> torch.Tensor:
    """Per-sequence losses (B,) for clean tokens x0 (B, L).

    ``t`` (B,) and ``perturbed`` x_t (B, L) override the random draws. RNG use (the global torch
    RNG when ``generator`` is None) follows the reference: rand(B) for t, then the forward
    process's draws.
    """
    if t is None:
        t = sample_t(x0.shape[0], eps, device=x0.device, generator=generator)
    sigma, dsigma = noise(t)
    if perturbed is None:
        perturbed = graph.sample_transition(x0, sigma[:, None], generator=generator)
    log_score = score_fn(perturbed, sigma)
    return sequence_loss(graph.score_entropy(log_score, sigma[:, None], perturbed, x0), dsigma)
