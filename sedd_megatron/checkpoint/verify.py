"""Comparing a converted model with its source: log-scores on the same random (x_t, sigma).

Both sides are :class:`~sedd_megatron.models.score_model.ScoreModel` s (a Megatron stage on any
TP/PP layout, or the plain twin), compared through their full-vocabulary log-scores.
"""

import torch

from sedd_megatron.models.score_model import ScoreModel

TOLERANCE = 1e-5  # largest allowed relative difference of the log-scores (float32)


def random_inputs(config, batch: int = 2, length: int = 32, seed: int = 0):
    """x_t over all vocabulary rows (MASK included for absorb) and sigma in [0.05, 5]."""
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randint(0, config.vocab_rows, (batch, min(length, config.length)), generator=gen)
    sigma = 0.05 + 4.95 * torch.rand(batch, generator=gen)
    return x_t, sigma


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (log-scores are finite once padding is dropped)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def compare(model: ScoreModel, reference: ScoreModel, config) -> float:
    """Largest relative difference of the log-scores of ``model`` and ``reference`` on random
    inputs for ``config`` (a collective: call on every rank of the model's replica)."""
    x_t, sigma = random_inputs(config)
    return relative_difference(
        model.full_log_score(x_t, sigma), reference.full_log_score(x_t, sigma)
    )
