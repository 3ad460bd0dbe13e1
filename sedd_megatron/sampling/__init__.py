"""Sampling from trained SEDD models: prompts (prefix, suffix, infill templates), the sampler
engine over the plain twin or SEDDModel on TP/PP layers, and generation runs.

    from sedd_megatron.sampling import sample_texts
    texts = sample_texts("runs/quickstart/checkpoint", num=4, steps=64, seed=0)
    infilled = sample_texts(path, num=4, template="The capital of France is [MASK:3].")

Lower level: ``open_model`` (``sedd_megatron.checkpoint``; a ``ScoreModel``) ->
``Sampler(model, SamplingOptions(...)).sample(...)``, or ``generate(model, prompts, ...)`` for
JSONL records (what ``tools/generate_sedd.py`` writes). A pretrain_sedd.py checkpoint needs the
caller's Megatron world (``sedd_megatron.runtime.world``); nothing here starts one.
"""

from sedd_megatron.checkpoint.opener import open_model
from sedd_megatron.errors import PromptError
from sedd_megatron.models.score_model import MegatronScoreModel, PlainScoreModel, ScoreModel

from .engine import Sampler, SamplingOptions
from .generate import (
    default_device,
    generate,
    make_records,
    run_samples,
    sample_texts,
    write_jsonl,
)
from .prompts import (
    Condition,
    Prompt,
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
    "PlainScoreModel",
    "Prompt",
    "PromptError",
    "Sampler",
    "SamplingOptions",
    "ScoreModel",
    "Step",
    "conditions_for",
    "default_device",
    "encode_prompt",
    "generate",
    "ids_encoder",
    "make_records",
    "open_model",
    "parse_template",
    "read_prompts",
    "run_samples",
    "sample_texts",
    "schedule",
    "score_sum",
    "tile_weights",
    "write_jsonl",
]
