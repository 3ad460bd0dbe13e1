"""Sampling from trained SEDD models: prompts (prefix, suffix, infill templates), the sampler
engine over the plain twin or SEDDModel on TP/PP layers, and generation runs.

    from sedd_megatron.sampling import sample_texts
    texts = sample_texts("runs/quickstart/checkpoint", num=4, steps=64, seed=0)
    infilled = sample_texts(path, num=4, template="The capital of France is [MASK:3].")

Lower level: ``open_model`` (``sedd_megatron.checkpoint``; a ``ScoreModel``) ->
``Sampler(model, SamplingOptions(...)).sample(...)``, or ``generate(model, prompts, ...)`` for
JSONL records (what ``tools/generate_sedd.py`` writes; ``iter_records`` gives them batch by
batch and ``RecordWriter`` streams them to a file). Settings are checked by the functions of
``options`` (``SamplingOptions`` and ``generate`` call them): bad values raise ConfigError.
A pretrain_sedd.py checkpoint needs the caller's Megatron world
(``sedd_megatron.runtime.world``); nothing here starts one.
"""

from sedd_megatron.checkpoint.opener import open_model
from sedd_megatron.errors import ConfigError, PromptError
from sedd_megatron.models.score_model import MegatronScoreModel, PlainScoreModel, ScoreModel

from .engine import Sampler, SamplingOptions
from .generate import (
    RecordWriter,
    check_output,
    default_device,
    generate,
    iter_records,
    iter_samples,
    make_records,
    partial_path,
    run_samples,
    sample_texts,
    write_jsonl,
)
from .options import check_run
from .prompts import (
    Condition,
    Prompt,
    check_prompts,
    conditions_for,
    encode_prompt,
    ids_encoder,
    parse_template,
    read_prompts,
)
from .step import Step, schedule, score_sum, tile_weights

__all__ = [
    "Condition",
    "ConfigError",
    "MegatronScoreModel",
    "PlainScoreModel",
    "Prompt",
    "PromptError",
    "RecordWriter",
    "Sampler",
    "SamplingOptions",
    "ScoreModel",
    "Step",
    "check_output",
    "check_prompts",
    "check_run",
    "conditions_for",
    "default_device",
    "encode_prompt",
    "generate",
    "ids_encoder",
    "iter_records",
    "iter_samples",
    "make_records",
    "open_model",
    "parse_template",
    "partial_path",
    "read_prompts",
    "run_samples",
    "sample_texts",
    "schedule",
    "score_sum",
    "tile_weights",
    "write_jsonl",
]
