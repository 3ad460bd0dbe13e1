"""The sampler's transition weights on a slice of the vocabulary (a tensor-parallel shard).

``sedd_megatron.diffusion.sampling`` defines the weights on the full vocabulary. They only need
the vocabulary through one per-token sum, so a shard computes its columns from its own scores
plus that all-reduced (B, L) sum. With s = exp(log-score) (s_x = 1 at the current token x):

* absorb, x = MASK, coefficient c (Euler: dt sigma_bar'(t); analytic: e^dsigma - 1; denoiser:
  e^sigma_bar(eps) - 1): w_y = c s_y for y != MASK, w_MASK = 1 - c S, S = sum_{y != MASK} s_y
  (the denoiser drops the MASK column). x != MASK: w = onehot(x) (the token stays).
* uniform, Euler: w_y = (c / N) s_y for y != x, w_x = 1 - (c / N)(T - 1), T = sum_y s_y.
* uniform, analytic with exponent d (dsigma, or sigma_bar(eps) for the denoiser):
  w_y = (e^d s_y - (e^d - 1) T / N) ((1 - e^-d) / N + e^-d [y = x]).

Weights are float64 (from the float32 scores); coefficients are computed in float64 from the
float32 time grid (the model sees the reference's float32 sigma).
"""

from dataclasses import dataclass

import torch

from sedd_megatron.diffusion import Graph, Noise, time_grid

KINDS = ("euler", "analytic", "denoise")


@dataclass(frozen=True)
class Step:
    """One draw of the sampler. ``index`` 0..steps-1 for predictor steps, ``steps`` for the
    denoiser; ``t`` the float32 time (as the reference); ``sigma`` the float32 total noise fed
    to the model; ``kind`` in KINDS; ``coef`` (Euler: dt sigma_bar'(t)) or ``exponent``
    (analytic: dsigma; denoiser: sigma_bar(eps)), float64."""

    index: int
    t: float
    sigma: float
    kind: str
    coef: float = 0.0
    exponent: float = 0.0


def schedule(
    noise: Noise, steps: int, predictor: str, eps: float = 1e-5, denoise: bool = True
) -> list[Step]:
    """The draws of a run: ``steps`` predictor steps (none for predictor "none", which leaves
    the tokens alone) then the denoiser."""
    if predictor not in ("euler", "analytic", "none"):
        raise ValueError(f"unknown predictor {predictor!r} (expected analytic, euler or none)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = time_grid(steps, eps, dtype=torch.float32)
    dt = (1 - eps) / steps
    out = []
    for i in range(steps if predictor != "none" else 0):
        t32 = grid[i]
        t = t32.double()
        sigma = float(noise(t32)[0])
        if predictor == "euler":
            out.append(Step(i, float(t32), sigma, "euler", coef=dt * float(noise(t)[1])))
        else:
            dsigma = float(noise(t)[0] - noise(t - dt)[0])
            out.append(Step(i, float(t32), sigma, "analytic", exponent=dsigma))
    if denoise:
        t32 = grid[-1]
        sigma = float(noise(t32)[0])
        exponent = float(noise(t32.double())[0])
        out.append(Step(steps, float(t32), sigma, "denoise", exponent=exponent))
    return out


def num_columns(graph: Graph, step: Step) -> int:
    """Columns a draw chooses from: the vocabulary, less MASK for the absorb denoiser (which
    draws data tokens only)."""
    return graph.num_tokens if step.kind == "denoise" else graph.dim


def score_sum(graph: Graph, log_score: torch.Tensor, start: int) -> torch.Tensor:
    """Partial S (absorb: MASK excluded) or T (uniform) over columns [start, start + C) of the
    float32 log-scores (R, C), all real vocabulary columns; float64 (R,)."""
    s = log_score.double().exp()
    mask_col = graph.excluded_column(start)
    if mask_col is not None and 0 <= mask_col < s.shape[-1]:
        s[:, mask_col] = 0.0
    return s.sum(-1)


def tile_weights(
    graph: Graph, step: Step, log_score: torch.Tensor, x: torch.Tensor, start: int, total
) -> torch.Tensor:
    """Weights (R, C) float64 of columns [start, start + C) for R tokens with current ids x (R,),
    float32 log-scores (R, C) and the full-vocabulary sums ``total`` (R,) of :func:`score_sum`."""
    s = log_score.double().exp()
    total = total.double()
    return graph.sampler_weights(
        s, x, start, total, step.kind, coef=step.coef, exponent=step.exponent
    )
