"""Reverse-process samplers (docs/math.md §5): Euler and analytic (Tweedie tau-leaping)
predictors, a final denoiser, projectors for conditioning, and the ``sample`` driver.

``score_fn(x (B, L), sigma (B,)) -> log_score (B, L, dim)``; predictors exponentiate it. Each
predictor returns the unnormalised transition weights ``probs`` (B, L, dim) of one step,
separately from the categorical draw, so that they can be compared with recorded weights
(teacher forcing).

* Euler (t -> t - dt): probs = onehot(x) + dt sigma_bar'(t) R(x, s), R the reverse rate
  (Graph.reverse_rate).
* Analytic (Thm 4.2): with dsigma = sigma_bar(t) - sigma_bar(t - dt),
  probs_y = [exp(-dsigma Q) s]_y exp(dsigma Q)(x, y), i.e. staggered_score(s, dsigma) *
  transp_transition(x, dsigma). For absorb at a masked x: (e^dsigma - 1) s_y for y != M and
  1 - (e^dsigma - 1) sum_{y != M} s_y for M (may be negative; the categorical draw handles it).
  For absorb with the loglinear schedule this equals the Euler step exactly.
* Denoiser (after the last step, t = eps): the analytic step with dsigma = sigma_bar(eps), i.e.
  to sigma = 0; for absorb the MASK column is dropped (V' - 1 columns).

The time grid is linspace(1, eps, steps + 1) with eps = 1e-5 and step dt = (1 - eps) / steps, as
the reference (which evaluates sigma_bar(t - dt) rather than the next grid point; they agree to
rounding).
"""

from collections.abc import Callable

import torch

from .categorical import Generator, sample_categorical
from .graph import Graph
from .loss import ScoreFn
from .noise import Noise

Projector = Callable[[torch.Tensor], torch.Tensor]


def time_grid(steps: int, eps: float = 1e-5, dtype=torch.float32, device=None) -> torch.Tensor:
    """linspace(1, eps, steps + 1): the times of the predictor steps, then the denoiser's eps."""
    return torch.linspace(1, eps, steps + 1, dtype=dtype, device=device)


def _score(score_fn: ScoreFn, x, sigma):
    return score_fn(x, sigma.reshape(-1)).exp()


def euler_probs(graph: Graph, noise: Noise, score_fn: ScoreFn, x, t, dt) -> torch.Tensor:
    """Weights of one Euler step from time t (B, 1) to t - dt."""
    sigma, dsigma = noise(t)
    rate = graph.reverse_rate(x, _score(score_fn, x, sigma))
    return graph.onehot(x, rate.dtype) + dt * dsigma.to(rate.dtype)[..., None] * rate


def analytic_probs(graph: Graph, noise: Noise, score_fn: ScoreFn, x, t, dt) -> torch.Tensor:
    """Weights of one Tweedie tau-leaping step from time t (B, 1) to t - dt."""
    curr_sigma, next_sigma = noise(t)[0], noise(t - dt)[0]
    dsigma = curr_sigma - next_sigma
    stag = graph.staggered_score(_score(score_fn, x, curr_sigma), dsigma)
    return stag * graph.transp_transition(x, dsigma).to(stag.dtype)


def denoiser_probs(graph: Graph, noise: Noise, score_fn: ScoreFn, x, t) -> torch.Tensor:
    """Weights of the final denoising step at time t = eps (absorb: MASK column dropped)."""
    sigma = noise(t)[0]
    stag = graph.staggered_score(_score(score_fn, x, sigma), sigma)
    probs = stag * graph.transp_transition(x, sigma).to(stag.dtype)
    return probs[..., :-1] if graph.absorb else probs


PREDICTORS = {"euler": euler_probs, "analytic": analytic_probs}


def clamp_projector(locs, ids) -> Projector:
    """x[:, locs] = ids for every row (the reference's infilling projector)."""

    def project(x):
        x = x.clone()
        x[:, torch.as_tensor(locs, device=x.device)] = torch.as_tensor(ids, device=x.device)
        return x

    return project


def mask_projector(mask: torch.Tensor, values: torch.Tensor) -> Projector:
    """Per-row clamping: x = where(mask, values, x), mask and values (B, L)."""
    return lambda x: torch.where(mask.to(x.device), values.to(x.device), x)


def sample(
    score_fn: ScoreFn,
    graph: Graph,
    noise: Noise,
    batch_shape: tuple[int, int],
    steps: int,
    predictor: str = "analytic",
    denoise: bool = True,
    eps: float = 1e-5,
    projector: Projector | None = None,
    dtype: torch.dtype = torch.float64,
    time_dtype: torch.dtype = torch.float32,
    generator: Generator = None,
    device=None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Draw x ~ p_0 by running the reverse process from the limiting distribution.

    ``dtype``: categorical mode (float64 accurate; float32 with ``generator=None`` replays the
    reference draw for draw). ``time_dtype``: dtype of t and hence of sigma passed to ``score_fn``
    (float32 as the reference). ``generator``: None, one generator, or one per batch row.
    ``callback(i, x_in, probs, x_out)`` sees every draw (i = steps for the denoiser).
    Returns the projected final tokens (B, L).
    """
    project = projector or (lambda x: x)
    predict = PREDICTORS[predictor]
    batch = batch_shape[0]
    x = graph.sample_limit(*batch_shape, device=device, generator=generator)
    timesteps = time_grid(steps, eps, dtype=time_dtype, device=device)
    dt = (1 - eps) / steps

    def draw(i, x_in, probs):
        x_out = sample_categorical(probs, dtype, generator)
        if callback is not None:
            callback(i, x_in, probs, x_out)
        return x_out

    for i in range(steps):
        t = timesteps[i] * torch.ones(batch, 1, dtype=time_dtype, device=device)
        x = project(x)
        x = draw(i, x, predict(graph, noise, score_fn, x, t, dt))
    if denoise:
        x = project(x)
        t = timesteps[-1] * torch.ones(batch, 1, dtype=time_dtype, device=device)
        x = draw(steps, x, denoiser_probs(graph, noise, score_fn, x, t))
    return project(x)
