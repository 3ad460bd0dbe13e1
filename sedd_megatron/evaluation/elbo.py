"""Likelihood bounds of SEDD models (the ELBO), re-exported from the modules that hold them:

- :mod:`~sedd_megatron.evaluation.draws`: per-block generators, ``perturb``, ``BlockDraws``;
- :mod:`~sedd_megatron.evaluation.estimator`: ``evaluate_draws``, ``evaluate_blocks``,
  ``gather_blocks`` (the batched estimator);
- :mod:`~sedd_megatron.evaluation.stats`: confidence intervals, ``elbo_summary``,
  ``integrand_curve``;
- :mod:`~sedd_megatron.evaluation.plots`: ``plot_integrand``;
- :mod:`~sedd_megatron.evaluation.report`: ``ElboResult``, ``evaluate_elbo``,
  ``compare_designs``, ``elbo_report``.
"""

from sedd_megatron.evaluation.draws import BlockDraws, block_generator, perturb
from sedd_megatron.evaluation.estimator import evaluate_blocks, evaluate_draws, gather_blocks
from sedd_megatron.evaluation.report import (
    ElboResult,
    compare_designs,
    elbo_report,
    evaluate_elbo,
)
from sedd_megatron.evaluation.stats import LN2

__all__ = [
    "LN2",
    "BlockDraws",
    "ElboResult",
    "block_generator",
    "compare_designs",
    "elbo_report",
    "evaluate_blocks",
    "evaluate_draws",
    "evaluate_elbo",
    "gather_blocks",
    "perturb",
]
