"""Generation runs: load a model, batch prompts x samples, sample, decode, write JSONL records.

Sample k of a run is keyed by (seed, k): k counts samples over all prompts (prompt p's samples
are p * num_samples, ...), so a record's (seed, sample_index) reproduces it with any batch size
or parallel layout. Data-parallel replicas take every dp_size-th batch.
"""

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from sedd_megatron.atomic import atomic_write_text
from sedd_megatron.checkpoint.opener import open_model
from sedd_megatron.datasets.tokenizers import build_tokenizer

from .engine import Sampler, SamplingOptions
from .prompts import Prompt, conditions_for, ids_encoder


def run_samples(
    sampler: Sampler,
    conditions: Sequence,
    num_samples: int,
    batch_size: int,
    seed: int,
    progress: bool = False,
) -> list[tuple[int, int, list[int]]]:
    """(prompt index, sample index, tokens) for ``num_samples`` samples of every condition,
    sorted by sample index, on every rank."""
    model = sampler.model
    jobs = [(p, p * num_samples + k) for p in range(len(conditions)) for k in range(num_samples)]
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    mine = batches[model.dp_rank :: model.dp_size]
    if sampler.options.fp32_sampling:
        torch.manual_seed(seed + model.dp_rank)  # one global stream per replica, as the reference
    bar = _progress_bar(len(mine) * len(sampler.steps), progress)
    results = []
    for batch in mine:
        x = sampler.sample(
            [conditions[p] for p, _ in batch],
            [k for _, k in batch],
            None if sampler.options.fp32_sampling else seed,
            progress=bar.update if bar else None,
        )
        results += [(p, k, row.tolist()) for (p, k), row in zip(batch, x.cpu(), strict=True)]
    if bar:
        bar.close()
    merged = [r for part in model.gather_objects(results) for r in part]
    return sorted(merged, key=lambda r: r[1])


def _progress_bar(total: int, enabled: bool):
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if not (enabled and rank0):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="sampling", unit="step", file=sys.stderr)


def make_records(results, prompts, decode: Callable | None, seed: int, settings: dict):
    """One JSON-able record per sample: text (None without a tokenizer), token ids, prompt,
    settings, seed and sample index."""
    records = []
    for p, k, tokens in results:
        records.append(
            {
                "sample_index": k,
                "seed": seed,
                "prompt": prompts[p].to_dict(),
                "text": decode(tokens) if decode else None,
                "tokens": tokens,
                "settings": settings,
            }
        )
    return records


def write_jsonl(records, path=None) -> None:
    """Write records to ``path`` atomically (temporary file + rename), or to stdout."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if path is None or str(path) == "-":
        sys.stdout.write(lines)
        sys.stdout.flush()
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, lines, permissions=0o600)  # owner-only: the mode they have always had


def generate(
    model,
    prompts: Sequence[Prompt],
    *,
    tokenizer=None,
    num_samples: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    options: SamplingOptions | None = None,
    progress: bool = False,
    extra_settings: dict | None = None,
) -> list[dict]:
    """Sample ``num_samples`` per prompt from a score model; returns the records (every rank).
    ``tokenizer`` None: prompts are token ids as text and records carry no text."""
    encode = tokenizer.encode if tokenizer is not None else ids_encoder
    conditions = conditions_for(prompts, encode, model.seq_length, model.graph.num_tokens)
    options = options or SamplingOptions()
    sampler = Sampler(model, options)
    results = run_samples(sampler, conditions, num_samples, batch_size, seed, progress)
    settings = {**options.to_dict(), "seq_length": model.seq_length, **(extra_settings or {})}
    return make_records(results, prompts, tokenizer.decode if tokenizer else None, seed, settings)


def default_device() -> str:
    """Where the sampler puts a plain model: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def sample_texts(
    model,
    num: int = 4,
    *,
    template: str | None = None,
    prefix: str | None = None,
    suffix: str | None = None,
    steps: int = 128,
    seed: int = 0,
    predictor: str = "analytic",
    seq_length: int | None = None,
    batch_size: int | None = None,
    tokenizer=None,
    backend: str = "auto",
) -> list[str]:
    """``num`` texts from a score model, in this process: unconditional, or conditioned on a
    prefix / suffix / infill ``template`` ("... [MASK:12] ..."). Tokenizer: GPT-2 BPE.

    ``model``: an open :class:`~sedd_megatron.models.score_model.ScoreModel`, or a directory
    opened with :func:`~sedd_megatron.checkpoint.open_model` (``backend``): a plain model
    directory runs the plain twin here; a pretrain_sedd.py checkpoint needs the caller's
    Megatron world (``with sedd_megatron.runtime.world(): ...``), which is never started here.
    """
    tokenizer = tokenizer or build_tokenizer("gpt2")
    if isinstance(model, (str, os.PathLike)):
        model = open_model(model, backend, seq_length=seq_length, device=default_device())
    records = generate(
        model,
        [Prompt(prefix=prefix, suffix=suffix, template=template)],
        tokenizer=tokenizer,
        num_samples=num,
        batch_size=batch_size or num,
        seed=seed,
        options=SamplingOptions(predictor=predictor, steps=steps),
    )
    return [r["text"] for r in records]
