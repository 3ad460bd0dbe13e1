"""Noise schedules: total noise sigma_bar(t) and its rate sigma_bar'(t), t in [0, 1]
(docs/math.md §2).

The forward process is dp_t/dt = sigma(t) Q p_t, so p_{t|0} = exp(sigma_bar(t) Q) with
sigma_bar(t) = int_0^t sigma(s) ds. ``noise(t)`` returns ``(sigma_bar(t), sigma_bar'(t))`` in
t's dtype.

* LogLinear (absorb): sigma_bar(t) = -log(1 - (1 - eps) t),
  sigma_bar'(t) = (1 - eps) / (1 - (1 - eps) t), so the masking probability
  1 - e^{-sigma_bar} = (1 - eps) t is linear in t. eps = 1e-3 (the reference hard-codes it and
  ignores sigma_min / sigma_max).
* Geometric (uniform): sigma_bar(t) = sigma_min^{1-t} sigma_max^t,
  sigma_bar'(t) = sigma_bar(t) (log sigma_max - log sigma_min).
* SigmaNoise: the total noise as its own time variable (the ELBO's [0, t_eps] term).

``score_log_expm1`` is the log(e^sigma - 1) every score model scales its output by.
"""

import math

import torch


def score_log_expm1(sigma: torch.Tensor) -> torch.Tensor:
    """log(e^sigma - 1) as the score models scale their output by sigma (the reference SEDD's
    form: expm1(sigma) below sigma = 0.5, exp(sigma) - 1 above), in sigma's dtype.

    The Megatron model, the plain model and the sampler's score cache all call this one
    function: a cached score moved to a new sigma equals a fresh one only if they agree bit for
    bit. ``graph.log_expm1`` (sigma + log(1 - e^-sigma)) is the graphs' own, finite for tiny
    sigma, and is not interchangeable with it.
    """
    return torch.where(sigma < 0.5, torch.expm1(sigma), sigma.exp() - 1).log()


class Noise:
    """Base class: ``noise(t) -> (total_noise, rate_noise)``."""

    def total_noise(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rate_noise(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        return self.total_noise(t), self.rate_noise(t)


class LogLinearNoise(Noise):
    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def total_noise(self, t):
        return -torch.log1p(-(1 - self.eps) * t)

    def rate_noise(self, t):
        return (1 - self.eps) / (1 - (1 - self.eps) * t)

    def __repr__(self):
        return f"LogLinearNoise(eps={self.eps})"


class GeometricNoise(Noise):
    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def total_noise(self, t):
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def rate_noise(self, t):
        return self.total_noise(t) * (math.log(self.sigma_max) - math.log(self.sigma_min))

    def __repr__(self):
        return f"GeometricNoise(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class SigmaNoise(Noise):
    """The total noise as its own time variable: sigma_bar(s) = s, sigma_bar'(s) = 1. The
    estimator evaluates the tail design's draws with it, so a draw's loss is sum_l SE_l at total
    noise s (the integral over the total noise needs no sigma_bar')."""

    def total_noise(self, t):
        return t

    def rate_noise(self, t):
        return torch.ones_like(t)

    def __repr__(self):
        return "SigmaNoise()"


def get_noise(
    name: str, sigma_min: float = 1e-4, sigma_max: float = 20.0, eps: float = 1e-3
) -> Noise:
    """``"loglinear"`` (uses only eps, as the reference) or ``"geometric"`` (sigma_min/max)."""
    if name == "loglinear":
        return LogLinearNoise(eps)
    if name == "geometric":
        return GeometricNoise(sigma_min, sigma_max)
    raise ValueError(f"unknown noise schedule {name!r} (expected 'loglinear' or 'geometric')")
