"""Evaluation of SEDD models: likelihood bounds (ELBO, perplexity bound with confidence
intervals, variance-reduced t-designs) and sample quality (generative perplexity under a local
causal LM, unigram entropy, MAUVE).

Importing this package imports neither Megatron nor transformers; names load on first use.
"""

import importlib

_EXPORTS = {
    "EvalError": "errors",
    "ptb_detokenize": "detokenize",
    "EvalData": "data",
    "load_eval_data": "data",
    "iter_documents": "data",
    "make_blocks": "data",
    "DESIGNS": "designs",
    "build_design": "designs",
    "MonteCarloDesign": "designs",
    "StratifiedDesign": "designs",
    "CountImportanceDesign": "designs",
    "combine_replicates": "stats",
    "PlainScorer": "models",
    "MegatronScorer": "models",
    "plain_scorer": "models",
    "megatron_scorer": "models",
    "BlockDraws": "elbo",
    "ElboResult": "elbo",
    "evaluate_draws": "elbo",
    "evaluate_blocks": "elbo",
    "evaluate_elbo": "elbo",
    "compare_designs": "elbo",
    "elbo_report": "elbo",
    "CausalLM": "gen_ppl",
    "load_causal_lm": "gen_ppl",
    "generative_perplexity": "gen_ppl",
    "unigram_entropy": "gen_ppl",
    "mauve_score": "gen_ppl",
    "read_samples": "gen_ppl",
    "gen_ppl_report": "gen_ppl",
    "plot_gen_ppl_vs_steps": "gen_ppl",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
