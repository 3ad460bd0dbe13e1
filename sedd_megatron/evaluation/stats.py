"""Confidence intervals for sums of independent Monte-Carlo estimates.

Each block b has R_b independent replicate estimates (group means of weighted losses). Its
estimate is their mean and its Monte-Carlo variance is s_b^2 / R_b (s_b^2 the sample variance
of the replicates). The dataset total is the sum over blocks, with variance V = sum_b s_b^2/R_b;
the interval uses Student's t with Welch-Satterthwaite degrees of freedom
nu = V^2 / sum_b (s_b^2/R_b)^2 / (R_b - 1), which is R - 1 for one block and grows with the
number of blocks.
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
