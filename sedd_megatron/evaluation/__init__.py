"""Evaluation of SEDD models: likelihood bounds (ELBO, perplexity bound with confidence
intervals, variance-reduced t-designs) and sample quality (generative perplexity under a local
causal LM, unigram entropy, MAUVE).

Importing this package imports neither Megatron nor transformers.
"""

from sedd_megatron.errors import EvalError

from .data import EvalData, iter_documents, load_eval_data, make_blocks
from .designs import (
    DESIGNS,
    CountImportanceDesign,
    MonteCarloDesign,
    StratifiedDesign,
    build_design,
)
from .detokenize import ptb_detokenize
from .draws import BlockDraws, block_generator, perturb
from .estimator import evaluate_blocks, evaluate_draws, gather_blocks
from .gen_ppl import (
    CausalLM,
    gen_ppl_report,
    generative_perplexity,
    load_causal_lm,
    mauve_score,
    read_samples,
    unigram_entropy,
)
from .plots import plot_gen_ppl_vs_steps, plot_integrand
from .report import ElboResult, compare_designs, elbo_report, evaluate_elbo, open_eval_model
from .stats import combine_replicates, elbo_summary, integrand_curve

__all__ = [
    "BlockDraws",
    "CausalLM",
    "CountImportanceDesign",
    "DESIGNS",
    "ElboResult",
    "EvalData",
    "EvalError",
    "MonteCarloDesign",
    "StratifiedDesign",
    "block_generator",
    "build_design",
    "combine_replicates",
    "compare_designs",
    "elbo_report",
    "elbo_summary",
    "evaluate_blocks",
    "evaluate_draws",
    "evaluate_elbo",
    "gather_blocks",
    "gen_ppl_report",
    "generative_perplexity",
    "integrand_curve",
    "iter_documents",
    "load_causal_lm",
    "load_eval_data",
    "make_blocks",
    "mauve_score",
    "open_eval_model",
    "perturb",
    "plot_gen_ppl_vs_steps",
    "plot_integrand",
    "ptb_detokenize",
    "read_samples",
    "unigram_entropy",
]
