"""Evaluation of SEDD models: likelihood bounds (ELBO, perplexity bound with confidence
intervals, variance-reduced t-designs) and sample quality (generative perplexity under a local
causal LM, unigram entropy, MAUVE).

Importing this package imports neither torch, Megatron nor transformers: the names below
load their module on first use (:mod:`.settings`, the checks of settings, is loaded at once).
"""

from sedd_megatron._lazy import lazy_exports
from sedd_megatron.errors import EvalError

from .settings import DESIGNS, check_elbo_settings, check_eval_data, default_replicates

_LAZY = {  # these modules import torch (or matplotlib/transformers on use)
    "ar_summary": "autoregressive",
    "block_nlls": "autoregressive",
    "evaluate_ar": "autoregressive",
    "EvalData": "data",
    "iter_documents": "data",
    "load_eval_data": "data",
    "make_blocks": "data",
    "CountImportanceDesign": "designs",
    "MonteCarloDesign": "designs",
    "StratifiedDesign": "designs",
    "build_design": "designs",
    "ptb_detokenize": "detokenize",
    "BlockDraws": "draws",
    "block_generator": "draws",
    "perturb": "draws",
    "evaluate_blocks": "estimator",
    "evaluate_draws": "estimator",
    "gather_blocks": "estimator",
    "CausalLM": "gen_ppl",
    "gen_ppl_report": "gen_ppl",
    "generative_perplexity": "gen_ppl",
    "load_causal_lm": "gen_ppl",
    "mauve_score": "gen_ppl",
    "read_samples": "samples",
    "read_texts": "samples",
    "unigram_entropy": "gen_ppl",
    "plot_gen_ppl_vs_steps": "plots",
    "plot_integrand": "plots",
    "ElboResult": "report",
    "compare_designs": "report",
    "elbo_report": "report",
    "evaluate_elbo": "report",
    "open_eval_model": "report",
    "combine_replicates": "stats",
    "elbo_summary": "stats",
    "integrand_curve": "stats",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "ar_summary",
    "block_nlls",
    "evaluate_ar",
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
    "check_elbo_settings",
    "check_eval_data",
    "combine_replicates",
    "compare_designs",
    "default_replicates",
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
    "read_texts",
    "unigram_entropy",
]
