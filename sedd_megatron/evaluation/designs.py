"""Monte-Carlo designs over the diffusion time t (and the number of corrupted positions) for the
ELBO of one block.

The quantity estimated for a block x0 of L tokens is the paper's (docs/math.md §6.1):

    ELBO(x0) = E_{t ~ U(eps, 1)} E_{x_t ~ p_{t|0}(.|x0)} [ sum_l sigma_bar'(t) SE_l(x_t, x0) ],

the expected reference training loss (no (1 - eps) density correction; the [0, eps] part and
the prior KL are left out, as in the paper: :class:`TailDesign` estimates the first, and the
graph's ``prior_kl`` gives the second; docs/math.md §6.5). Under the forward process every
position is corrupted independently with probability q(t) = 1 - exp(-sigma_bar(t)) (masked for
the absorbing graph, redrawn uniformly for the uniform graph), so the number k of corrupted
positions is Binomial(L, q(t)) and, given k, the corrupted set is a uniform k-subset. Hence

    ELBO(x0) = 1/(1 - eps) int_eps^1 sum_k Bin(k; L, q(t)) F(t, k) dt,
    F(t, k) = E_{uniform k-subset} [ sum_l sigma_bar'(t) SE_l ].

Every design draws ``replicates`` independent groups of ``points`` evaluations; each
evaluation j has a time t_j, a weight w_j and optionally a count k_j, and
``mean_j w_j * loss_j`` of a group is an unbiased estimate of ELBO(x0). The spread between
groups gives the Monte-Carlo variance (so any design gets an honest confidence interval).

- :class:`MonteCarloDesign` (``mc``): the paper. t ~ U(eps, 1) i.i.d., x_t from the forward
  process, weight 1. Each evaluation is its own group.
- :class:`StratifiedDesign` (``stratified``): [eps, 1] cut into ``points`` equal strata, one
  uniform t per stratum, x_t from the forward process, weight 1.
- :class:`CountImportanceDesign` (``importance``): importance sampling over (t, k) with a
  proposal proportional to Bin(k; L, q(t)) * omega(t, k), tabulated on a grid in
  z = arcsin(sqrt(q)) (binomial variance-stabilising), stratified over the cells ordered by k,
  then t. For the absorbing graph omega = k * d/dt log q(t), the integrand of a predictor with a
  constant per-token cross-entropy (then w_j * F(t_j, k_j) is nearly constant), which removes
  the variance of the number of masked tokens and of the 1/t weighting near t = eps; for the
  uniform graph omega = sigma_bar'(t) (L + k log(N) / (e^sigma_bar - 1)). The weight is the
  exact density ratio w = Bin(k; L, q(t)) / ((1 - eps) g(t, k)), so the estimate is unbiased
  whatever the grid.
- :class:`TailDesign` (the [0, t_eps] term, not a choice of ``--design``): the same importance
  sampling over (sigma, k) for sigma in [0, sigma_bar(eps)], evaluated at total noise sigma.
"""

from __future__ import annotations

import math

import torch

from sedd_megatron.diffusion.noise import SigmaNoise
from sedd_megatron.evaluation.draws import Draws
from sedd_megatron.evaluation.settings import (
    DESIGNS,
    check_design,
    check_tail_samples,
    default_replicates,
)

__all__ = [
    "DESIGNS",
    "CountImportanceDesign",
    "Design",
    "MonteCarloDesign",
    "StratifiedDesign",
    "TailDesign",
    "build_design",
    "build_tail_design",
]


class Design:
    """Base class: ``draw(generator) -> Draws`` for one block."""

    name = ""

    def __init__(self, replicates: int, points: int, eps: float = 1e-3):
        if replicates < 1 or points < 1:
            raise ValueError(f"need replicates >= 1 and points >= 1, got {replicates}, {points}")
        if not 0 < eps < 1:
            raise ValueError(f"t_eps must be in (0, 1), got {eps}")
        self.replicates, self.points, self.eps = replicates, points, eps

    @property
    def evaluations(self) -> int:
        return self.replicates * self.points

    def draw(self, generator: torch.Generator) -> Draws:
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "design": self.name,
            "replicates": self.replicates,
            "points_per_replicate": self.points,
            "t_eps": self.eps,
        }


class MonteCarloDesign(Design):
    """The paper's estimator: i.i.d. t ~ U(eps, 1) drawn as (1 - eps) * rand + eps."""

    name = "mc"

    def __init__(self, num_samples: int, eps: float = 1e-3):
        super().__init__(num_samples, 1, eps)

    def draw(self, generator):
        u = torch.rand(self.replicates, 1, generator=generator, dtype=torch.float64)
        t = (1 - self.eps) * u + self.eps
        return Draws(t=t, weight=torch.ones_like(t))


class StratifiedDesign(Design):
    """One uniform t in each of ``points`` equal strata of [eps, 1], per replicate."""

    name = "stratified"

    def draw(self, generator):
        u = torch.rand(self.replicates, self.points, generator=generator, dtype=torch.float64)
        strata = torch.arange(self.points, dtype=torch.float64)
        t = self.eps + (1 - self.eps) * (strata + u) / self.points
        return Draws(t=t, weight=torch.ones_like(t))


def corruption_probability(noise, t: torch.Tensor) -> torch.Tensor:
    """q(t) = 1 - exp(-sigma_bar(t)), float64."""
    sigma, _ = noise(t.double())
    return -torch.expm1(-sigma)


def inverse_time(noise, q: torch.Tensor, eps: float, iters: int = 80) -> torch.Tensor:
    """t in [eps, 1] with q(t) = q (bisection; sigma_bar is increasing), float64."""
    lo = torch.full_like(q, eps, dtype=torch.float64)
    hi = torch.ones_like(lo)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = corruption_probability(noise, mid) < q
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def log_binomial(k: torch.Tensor, n: int, sigma: torch.Tensor) -> torch.Tensor:
    """log Bin(k; n, q) with q = 1 - e^{-sigma}, computed from sigma (stable near 0 and 1)."""
    k = k.double()
    log_q = torch.log(-torch.expm1(-sigma))
    log_1mq = -sigma
    log_choose = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    return log_choose + k * log_q + (n - k) * log_1mq


class _CellImportance(Design):
    """Importance sampling over (t, k) from a proposal tabulated on cells (k, time bin) of the
    grid ``nodes``: mass ~ exp(log target + log omega) at the bin's midpoint x its width, drawn
    stratified over the cells ordered by k then t, uniform within a cell. The weight is the
    exact density ratio target(t, k) / g(t, k). Subclasses set the grid and the target."""

    def _tabulate(self, nodes: torch.Tensor, graph, length: int):
        self.nodes = nodes
        self.widths = nodes[1:] - nodes[:-1]
        mid = 0.5 * (nodes[1:] + nodes[:-1])
        k = torch.arange(length + 1, dtype=torch.float64)
        log_h = self._log_target(mid[None, :], k[:, None]) + self._log_omega(
            mid[None, :], k[:, None]
        )
        log_mass = log_h + self.widths.log()[None, :]  # (L + 1, bins), k-major
        finite = torch.isfinite(log_mass)
        top = log_mass[finite].max()
        # every cell that can matter keeps a (tiny) positive mass: no bias from underflow
        floor = top - 600.0
        log_mass = torch.where(finite, log_mass.clamp_min(floor), log_mass)
        if graph.clean_loss_is_zero:
            log_mass[0] = -math.inf  # k = 0: nothing corrupted, the loss is exactly 0
        mass = torch.exp(log_mass - top)
        self.log_total = math.log(mass.sum().item()) + top.item()
        self.cdf = torch.cumsum(mass.flatten(), 0)
        self.cdf /= self.cdf[-1].clone()
        self.log_cell_density = log_mass - self.log_total - self.widths.log()[None, :]

    def _log_target(self, t, k):
        raise NotImplementedError

    def _log_omega(self, t, k):
        raise NotImplementedError

    def _within(self, v: torch.Tensor) -> torch.Tensor:
        """Where in its cell a draw lies, from v ~ U[0, 1)."""
        return v

    def draw(self, generator):
        shape = (self.replicates, self.points)
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        u = (torch.arange(self.points, dtype=torch.float64) + u) / self.points
        cell = torch.searchsorted(self.cdf, u.flatten().contiguous(), right=True)
        cell = cell.clamp_max(self.cdf.numel() - 1)
        bins = self.widths.numel()
        k, b = cell // bins, cell % bins
        v = torch.rand(cell.shape, generator=generator, dtype=torch.float64)
        t = self.nodes[b] + self._within(v) * self.widths[b]
        log_g = self.log_cell_density[k, b]
        log_w = self._log_target(t, k.double()) - log_g
        return Draws(t=t.view(shape), weight=torch.exp(log_w).view(shape), count=k.view(shape))

    def describe(self) -> dict:
        return {**super().describe(), "grid_bins": int(self.widths.numel())}


class CountImportanceDesign(_CellImportance):
    """Importance sampling over (t, k), stratified over cells ordered by k then t."""

    name = "importance"

    def __init__(
        self,
        graph,
        noise,
        seq_length: int,
        replicates: int,
        points: int,
        eps: float = 1e-3,
        grid_size: int | None = None,
    ):
        super().__init__(replicates, points, eps)
        self.graph, self.noise, self.length = graph, noise, seq_length
        grid = grid_size or max(256, int(24 * math.sqrt(seq_length)))
        q_lo = corruption_probability(noise, torch.tensor([eps], dtype=torch.float64))
        q_hi = corruption_probability(noise, torch.tensor([1.0], dtype=torch.float64))
        z = torch.linspace(
            torch.asin(q_lo.sqrt()).item(), torch.asin(q_hi.sqrt()).item(), grid + 1
        ).double()
        nodes = inverse_time(noise, torch.sin(z) ** 2, eps)
        nodes[0], nodes[-1] = eps, 1.0
        nodes = torch.unique(nodes)  # sorted; drops bins that collapsed numerically
        self._tabulate(nodes, graph, seq_length)

    def _log_target(self, t, k):
        """log of the target density over (t, k): Bin(k; L, q(t)) / (1 - eps)."""
        sigma, _ = self.noise(t)
        return log_binomial(k, self.length, sigma) - math.log(1 - self.eps)

    def _log_omega(self, t, k):
        """log omega(t, k), the graph's (module docstring)."""
        sigma, dsigma = self.noise(t)
        return self.graph.log_integrand_scale(sigma, dsigma, k, self.length)


class TailDesign(_CellImportance):
    """The [0, t_eps] term: int_0^{sigma_bar(t_eps)} E_{x ~ p_{sigma|0}} [sum_l SE_l] d sigma
    (in the total noise, from 0: docs/math.md §6.5), by importance sampling over (sigma, k) with
    the proposal of :class:`CountImportanceDesign` (Bin(k; L, q(sigma)) omega(sigma, k), omega
    the graph's ``log_integrand_scale`` with rate 1) on a grid uniform in sigma, stratified over
    the cells ordered by k then sigma. Its draws' ``t`` are total noises sigma, evaluated with
    :attr:`noise` (:class:`SigmaNoise`); the weight is Bin(k; L, q(sigma)) / g(sigma, k).

    For the absorbing graph almost no position is masked at such small noise; the design draws
    only k >= 1 (the k = 0 loss is exactly 0) in proportion to the integrand of a constant
    per-token cross-entropy, so the weight x loss is about that cross-entropy.
    """

    name = "tail"

    def __init__(
        self,
        graph,
        noise,
        seq_length: int,
        replicates: int,
        points: int,
        eps: float = 1e-3,
        grid_size: int = 32,
    ):
        super().__init__(replicates, points, eps)
        self.graph, self.length = graph, seq_length
        self.noise = SigmaNoise()
        self.sigma_eps = float(noise(torch.tensor(eps, dtype=torch.float64))[0])
        if not self.sigma_eps > 0:
            raise ValueError(f"the total noise at t_eps must be positive, got {self.sigma_eps}")
        nodes = torch.linspace(0.0, self.sigma_eps, grid_size + 1, dtype=torch.float64)
        nodes[-1] = self.sigma_eps
        self._tabulate(nodes, graph, seq_length)

    def _log_target(self, sigma, k):
        """log Bin(k; L, q(sigma)) (the measure d sigma: no normalisation)."""
        return log_binomial(k, self.length, sigma)

    def _log_omega(self, sigma, k):
        return self.graph.log_integrand_scale(sigma, torch.ones_like(sigma), k, self.length)

    def _within(self, v):
        """1 - v in (0, 1]: sigma > 0, never the integrable endpoint sigma = 0."""
        return 1 - v

    def describe(self) -> dict:
        return {**super().describe(), "sigma_range": [0.0, self.sigma_eps]}


def build_design(
    name: str,
    num_samples: int,
    graph,
    noise,
    seq_length: int,
    *,
    replicates: int | None = None,
    eps: float = 1e-3,
) -> Design:
    """A design with ``num_samples`` model evaluations per block.

    ``replicates`` (stratified/importance; default 10, else 8, 5, 4, 2 or the smallest divisor
    of num_samples): independent groups of num_samples / replicates points; it must divide
    num_samples. Every block gets at least two replicate estimates (mc: num_samples >= 2), so
    that its Monte-Carlo variance can be estimated: :func:`~.settings.check_design`
    (:class:`~sedd_megatron.errors.EvalError`, a ValueError, otherwise).
    """
    check_design(name, num_samples, replicates)
    if name == "mc":
        return MonteCarloDesign(num_samples, eps)
    if replicates is None:
        replicates = default_replicates(num_samples)
    points = num_samples // replicates
    if name == "stratified":
        return StratifiedDesign(replicates, points, eps)
    return CountImportanceDesign(graph, noise, seq_length, replicates, points, eps)


def build_tail_design(
    num_samples: int,
    graph,
    noise,
    seq_length: int,
    *,
    eps: float = 1e-3,
    replicates: int | None = None,
) -> TailDesign | None:
    """The [0, t_eps] term's design with ``num_samples`` model evaluations per block
    (``replicates``: default :func:`~.settings.default_replicates`); None for 0 (no tail)."""
    check_tail_samples(num_samples)
    if num_samples == 0:
        return None
    if replicates is None:
        replicates = default_replicates(num_samples)
    return TailDesign(graph, noise, seq_length, replicates, num_samples // replicates, eps)
