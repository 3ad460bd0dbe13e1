"""Generation runs: load a model, batch prompts x samples, sample, decode, write JSONL records.

Sample k of a run is keyed by (seed, k): k counts samples over all prompts (prompt p's samples
are p * num_samples, ...), so a record's (seed, sample_index) reproduces it with any batch size
or parallel layout. Data-parallel replicas take every dp_size-th batch.
"""

import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .backends import MegatronScoreModel, PlainScoreModel
from .engine import Sampler, SamplingOptions
from .prompts import Prompt, conditions_for, ids_encoder


def is_plain_dir(source) -> bool:
    """A published-layout directory: config.json + model.safetensors or pytorch_model.bin."""
    path = Path(source)
    weights = ("model.safetensors", "pytorch_model.bin")
    return (path / "config.json").is_file() and any((path / w).is_file() for w in weights)


def load_score_model(
    source,
    *,
    backend: str = "auto",
    iteration: int | None = None,
    use_ema: bool | None = None,
    seq_length: int | None = None,
):
    """A score model for ``Sampler``. backend: "plain" (the plain twin, one process), "megatron"
    (SEDDModel on the current TP/PP layout through ``sedd_megatron.checkpoint.load_sedd_model``:
    call ``init_distributed`` first) or "auto" (plain for a plain directory outside torchrun,
    else megatron). ``use_ema``: None = EMA weights when the checkpoint has them, False = raw."""
    if backend == "auto":
        distributed = torch.distributed.is_initialized() or int(os.environ.get("WORLD_SIZE", 1)) > 1
        backend = "plain" if is_plain_dir(source) and not distributed else "megatron"
    if backend == "plain":
        if not is_plain_dir(source):
            raise FileNotFoundError(
                f"{source}: not a plain model directory (config.json + weights)"
            )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return PlainScoreModel.from_pretrained(source, seq_length, device=device)
    if backend != "megatron":
        raise ValueError(f"unknown backend {backend!r} (expected auto, plain or megatron)")
    from sedd_megatron.checkpoint import load_sedd_model

    model, info = load_sedd_model(
        source, iteration=iteration, use_ema=use_ema, seq_length=seq_length
    )
    return MegatronScoreModel(model, info, seq_length)


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(lines)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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


def sample_texts(
    model_source,
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
    """``num`` texts from a pretrain_sedd.py checkpoint or a plain model directory, in this
    process: unconditional, or conditioned on a prefix / suffix / infill ``template``
    ("... [MASK:12] ..."). A Megatron checkpoint is loaded at TP = PP = 1 (a one-process
    distributed world is set up and torn down here unless one exists). Tokenizer: GPT-2 BPE."""
    from sedd_megatron.datasets.tokenizers import build_tokenizer
    from sedd_megatron.runtime import destroy_distributed, init_distributed

    tokenizer = tokenizer or build_tokenizer("gpt2")
    own_world = False
    if (backend == "megatron" or not is_plain_dir(model_source)) and backend != "plain":
        if not torch.distributed.is_initialized():
            init_distributed(tp=1, pp=1, seed=seed)
            own_world = True
        backend = "megatron"
    try:
        model = load_score_model(model_source, backend=backend, seq_length=seq_length)
        records = generate(
            model,
            [Prompt(prefix=prefix, suffix=suffix, template=template)],
            tokenizer=tokenizer,
            num_samples=num,
            batch_size=batch_size or num,
            seed=seed,
            options=SamplingOptions(predictor=predictor, steps=steps),
        )
    finally:
        if own_world:
            destroy_distributed()
    return [r["text"] for r in records]
