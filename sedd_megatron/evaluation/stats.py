"""Confidence intervals for sums of independent Monte-Carlo estimates, and the ELBO statistics
built on them (:func:`elbo_summary`, :func:`integrand_curve`).

Each block b has R_b independent replicate estimates (group means of weighted losses). Its
estimate is their mean and its Monte-Carlo variance is s_b^2 / R_b (s_b^2 the sample variance
of the replicates). The dataset total is the sum over blocks, with variance V = sum_b s_b^2/R_b;
the interval uses Student's t with Welch-Satterthwaite degrees of freedom
nu = V^2 / sum_b (s_b^2/R_b)^2 / (R_b - 1), which is R - 1 for one block and grows with the
number of blocks.

The complete bound (:func:`complete_summary`) adds independent terms: sum_i c_i X_i has
variance sum_i c_i^2 V_i and, again by Welch-Satterthwaite, nu = V^2 / sum_i (c_i^2 V_i)^2 / nu_i
(the same as pooling every block of every term; an exact term has V_i = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def t_quantile(level: float, dof: float) -> float:
    """Two-sided Student-t quantile (scipy if installed; else a Cornish-Fisher expansion)."""
    p = 0.5 + level / 2
    if not math.isfinite(dof) or dof > 1e6:
        dof = math.inf
    try:
        from scipy import stats

        return float(stats.t.ppf(p, dof)) if math.isfinite(dof) else float(stats.norm.ppf(p))
    except ImportError:
        z = _normal_quantile(p)
        if not math.isfinite(dof):
            return z
        g1 = (z**3 + z) / 4
        g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
        g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
        return z + g1 / dof + g2 / dof**2 + g3 / dof**3


def _normal_quantile(p: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass
class SumEstimate:
    """The sum over blocks of per-block means, with its Monte-Carlo standard error."""

    total: float
    variance: float  # of the total
    dof: float
    blocks: int

    @property
    def stderr(self) -> float:
        return math.sqrt(self.variance) if self.variance >= 0 else math.nan

    def half_width(self, level: float = 0.95) -> float:
        if math.isnan(self.dof):
            return math.nan
        return t_quantile(level, self.dof) * self.stderr


def combine_replicates(replicates: list[np.ndarray]) -> SumEstimate:
    """``replicates[b]``: the R_b replicate estimates of block b -> the total and its error.

    Blocks with a single replicate contribute their value but no variance information; if any
    block has one replicate the variance is NaN.
    """
    total, variance, dof_denominator = 0.0, 0.0, 0.0
    for values in replicates:
        values = np.asarray(values, dtype=np.float64)
        total += float(values.mean())
        if values.size < 2:
            variance = math.nan
            continue
        var_mean = float(values.var(ddof=1)) / values.size
        variance += var_mean
        dof_denominator += var_mean**2 / (values.size - 1)
    if math.isnan(variance):
        dof = math.nan
    elif dof_denominator == 0:
        dof = math.inf
    else:
        dof = variance**2 / dof_denominator
    return SumEstimate(total=total, variance=variance, dof=dof, blocks=len(replicates))


def scaled_sum(parts: list[tuple[float, SumEstimate]]) -> SumEstimate:
    """sum_i c_i X_i of independent estimates X_i given as (c_i, X_i), with its variance and
    Welch-Satterthwaite degrees of freedom (module docstring)."""
    total, variance, dof_denominator = 0.0, 0.0, 0.0
    for coef, est in parts:
        total += coef * est.total
        part = coef**2 * est.variance
        variance += part
        if math.isnan(part) or math.isnan(est.dof):
            dof_denominator = math.nan
        elif part > 0 and math.isfinite(est.dof):
            dof_denominator += part**2 / est.dof
    if math.isnan(variance) or math.isnan(dof_denominator):
        dof = math.nan
    elif dof_denominator == 0:
        dof = math.inf
    else:
        dof = variance**2 / dof_denominator
    blocks = max((est.blocks for _, est in parts), default=0)
    return SumEstimate(total=total, variance=variance, dof=dof, blocks=blocks)


LN2 = math.log(2.0)


def _bound_with_interval(nats: float, half: float, level: float) -> dict:
    """A bound in nats/token as nats, bits and perplexity, each with its confidence interval."""
    return {
        "nats_per_token": nats,
        "bits_per_token": nats / LN2,
        "ppl_bound": math.exp(nats),
        "confidence_level": level,
        "ci_nats_per_token": [nats - half, nats + half],
        "ci_bits_per_token": [(nats - half) / LN2, (nats + half) / LN2],
        "ci_ppl_bound": [math.exp(nats - half), math.exp(nats + half)],
        "ci_half_width_nats": half,
    }


def elbo_summary(blocks, seq_length: int, level: float = 0.95) -> dict:
    """nats/token, bits/token, perplexity bound, CI (Monte-Carlo error, data held fixed) of
    per-block draws (:class:`~sedd_megatron.evaluation.draws.BlockDraws`)."""
    est = combine_replicates([b.replicate_estimates for b in blocks])
    tokens = len(blocks) * seq_length
    nats = est.total / tokens
    half = est.half_width(level) / tokens
    evaluations = int(sum(b.loss.size for b in blocks))
    per_block = np.array([b.estimate / seq_length for b in blocks])
    stderr = est.stderr / tokens
    return {
        **_bound_with_interval(nats, half, level),
        "stderr_nats_per_token": stderr,
        "dof": est.dof,
        "blocks": len(blocks),
        "tokens": tokens,
        "evaluations": evaluations,
        # evaluations x variance: the cost of a given CI width (lower is better)
        "variance_x_evaluations": stderr**2 * evaluations,
        "block_nats_per_token_sd": float(per_block.std(ddof=1)) if per_block.size > 1 else 0.0,
    }


def integrand_curve(blocks, seq_length: int, eps: float = 1e-3, bins: int = 24) -> dict:
    """Binned estimate of the per-token integrand sigma_bar'(t) E[SE] / L over log-spaced
    t-bins: sum of w * loss in a bin / (draws * bin width) * (1 - eps), averaged over blocks
    (valid for every design, since w is the density ratio to t ~ U(eps, 1)). Bins without
    draws are NaN."""
    edges = np.geomspace(eps, 1.0, bins + 1)
    acc, hits = np.zeros(bins), np.zeros(bins)
    for b in blocks:
        idx = np.clip(np.searchsorted(edges, b.t.ravel(), side="right") - 1, 0, bins - 1)
        np.add.at(acc, idx, (b.weight * b.loss).ravel() / b.loss.size)
        np.add.at(hits, idx, 1)
    acc *= (1 - eps) / (np.diff(edges) * len(blocks) * seq_length)
    acc[hits == 0] = np.nan
    centers = np.sqrt(edges[1:] * edges[:-1])
    return {"t": centers, "integrand": acc, "edges": edges, "draws": hits}


def tail_summary(tail_blocks, seq_length: int, level: float = 0.95) -> dict:
    """The [0, t_eps] term (:class:`~sedd_megatron.evaluation.designs.TailDesign` draws) in
    nats/token with its confidence interval (Monte-Carlo error, data held fixed)."""
    est = combine_replicates([b.replicate_estimates for b in tail_blocks])
    tokens = len(tail_blocks) * seq_length
    nats, half = est.total / tokens, est.half_width(level) / tokens
    return {
        "nats_per_token": nats,
        "confidence_level": level,
        "ci_nats_per_token": [nats - half, nats + half],
        "ci_half_width_nats": half,
        "stderr_nats_per_token": est.stderr / tokens,
        "dof": est.dof,
        "evaluations": int(sum(b.loss.size for b in tail_blocks)),
    }


def complete_summary(
    blocks,
    tail_blocks,
    prior_nats_per_token: float,
    seq_length: int,
    eps: float,
    level: float = 0.95,
) -> dict:
    """The complete bound of docs/math.md §6.5 in nats/token, bits/token and as a perplexity
    bound, with a confidence interval combining the two terms' Monte-Carlo errors:

        (1 - eps) * paper + tail + prior,

    where paper is :func:`elbo_summary`'s number, E_{t ~ U(eps, 1)}[...] (so (1 - eps) * paper
    is the integral over [eps, 1]), tail the [0, t_eps] term (:func:`tail_summary`) and prior
    the exact prior term (``Graph.prior_kl`` at sigma_bar(1), per token)."""
    tokens = len(blocks) * seq_length
    main = combine_replicates([b.replicate_estimates for b in blocks])
    tail = combine_replicates([b.replicate_estimates for b in tail_blocks])
    prior = SumEstimate(prior_nats_per_token * tokens, 0.0, math.inf, len(blocks))
    est = scaled_sum([(1.0 - eps, main), (1.0, tail), (1.0, prior)])
    nats, half = est.total / tokens, est.half_width(level) / tokens
    evaluations = int(sum(b.loss.size for b in blocks) + sum(b.loss.size for b in tail_blocks))
    return {
        **_bound_with_interval(nats, half, level),
        "stderr_nats_per_token": est.stderr / tokens,
        "dof": est.dof,
        "evaluations": evaluations,
        "terms_nats_per_token": {
            "interval": (1.0 - eps) * main.total / tokens,
            "tail": tail.total / tokens,
            "prior": prior_nats_per_token,
        },
    }
