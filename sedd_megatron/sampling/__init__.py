"""Sampling from trained SEDD models: prompts (prefix, suffix, infill templates), the sampler
engine over the plain twin or SEDDModel on TP/PP layers, and generation runs.

    from sedd_megatron.sampling import sample_texts
    texts = sample_texts("runs/quickstart/checkpoint", num=4, steps=64, seed=0)
    infilled = sample_texts(path, num=4, template="The capital of France is [MASK:3].")

Lower level: ``load_score_model`` -> ``Sampler(model, SamplingOptions(...)).sample(...)``, or
``generate(model, prompts, ...)`` for JSONL records (what ``tools/generate_sedd.py`` writes).
"""

from .backends import MegatronScoreModel, ModelInfo, PlainScoreModel
from .engine import Sampler, SamplingOptions
from .generate import (
    generate,
    is_plain_dir,
    load_score_model,
    make_records,
    run_samples,
    sample_texts,
    write_jsonl,
)
from .prompts import (
    Condition,
    Prompt,
    PromptError,
    conditions_for,
    encode_prompt,
    ids_encoder,
    parse_template,
    read_prompts,
)
from .weights import Step, schedule, score_sum, tile_weights

__all__ = [
    "Condition",
    "MegatronScoreModel",
    "ModelInfo",
    "PlainScoreModel",
    "Prompt",
    "PromptError",
    "Sampler",
    "SamplingOptions",
    "Step",
    "conditions_for",
    "encode_prompt",
    "generate",
    "ids_encoder",
    "is_plain_dir",
    "load_score_model",
    "make_records",
    "parse_template",
    "read_prompts",
    "run_samples",
    "sample_texts",
    "schedule",
    "score_sum",
    "tile_weights",
    "write_jsonl",
]
