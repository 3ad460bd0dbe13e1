"""Generation runs: load a model, batch prompts x samples, sample, decode, write JSONL records.

Sample k of a run is keyed by (seed, k): k counts samples over all prompts (prompt p's samples
are p * num_samples, ...), so a record's (seed, sample_index) reproduces it with any batch size
or parallel layout. Data-parallel replicas take every dp_size-th batch. Records come out in
sample order as the batches finish (:func:`iter_records`); :class:`RecordWriter` streams them
to a JSONL file (``<output>.partial`` until the run is complete, so an interrupted run keeps
the samples it finished) or to stdout.
"""

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from sedd_megatron.atomic import atomic_write_text, remove
from sedd_megatron.checkpoint.opener import open_model
from sedd_megatron.datasets.tokenizers import build_tokenizer
from sedd_megatron.errors import ConfigError

from .engine import Sampler, SamplingOptions
from .options import check_run
from .prompts import Prompt, conditions_for, ids_encoder

PARTIAL_SUFFIX = ".partial"

Result = tuple[int, int, list[int]]  # (prompt index, sample index, tokens)


def iter_samples(
    sampler: Sampler,
    conditions: Sequence,
    num_samples: int,
    batch_size: int,
    seed: int,
    progress: bool = False,
) -> Iterator[list[Result]]:
    """(prompt index, sample index, tokens) for ``num_samples`` samples of every condition, one
    list per round of batches (a batch per data-parallel replica), in sample order, on every
    rank. Every rank must consume the whole iterator (each round gathers over the replicas)."""
    check_run(num_samples, batch_size, seed)
    model = sampler.model
    jobs = [(p, p * num_samples + k) for p in range(len(conditions)) for k in range(num_samples)]
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    rounds = -(-len(batches) // model.dp_size)
    mine = batches[model.dp_rank :: model.dp_size]  # round r: batch r * dp_size + dp_rank
    if sampler.options.fp32_sampling:
        torch.manual_seed(seed + model.dp_rank)  # one global stream per replica, as the reference
    bar = _progress_bar(len(mine) * len(sampler.steps), progress)
    try:
        for r in range(rounds):
            results = []
            if r < len(mine):
                batch = mine[r]
                x = sampler.sample(
                    [conditions[p] for p, _ in batch],
                    [k for _, k in batch],
                    None if sampler.options.fp32_sampling else seed,
                    progress=bar.update if bar else None,
                )
                results = [(p, k, row.tolist()) for (p, k), row in zip(batch, x.cpu(), strict=True)]
            merged = [res for part in model.gather_objects(results) for res in part]
            yield sorted(merged, key=lambda res: res[1])
    finally:
        if bar:
            bar.close()


def run_samples(
    sampler: Sampler,
    conditions: Sequence,
    num_samples: int,
    batch_size: int,
    seed: int,
    progress: bool = False,
) -> list[Result]:
    """(prompt index, sample index, tokens) for ``num_samples`` samples of every condition,
    sorted by sample index, on every rank."""
    rounds = iter_samples(sampler, conditions, num_samples, batch_size, seed, progress)
    return [res for part in rounds for res in part]


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
    """Write records to ``path`` atomically (temporary file + rename; mode 0666 less the umask),
    or to stdout. ``path``'s directory must exist (:func:`check_output`)."""
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if path is None or str(path) == "-":
        sys.stdout.write(lines)
        sys.stdout.flush()
        return
    atomic_write_text(check_output(path), lines)


def partial_path(path: str | os.PathLike) -> Path:
    """Where :class:`RecordWriter` streams ``path``'s records until the run is complete."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def check_output(path: str | os.PathLike | None) -> Path | None:
    """``path`` as a Path if a JSONL file can be written there (None or "-": stdout, None).

    For checking before any work: ``path`` is not a directory (nor is ``<path>.partial``) and
    its parent is an existing, writable directory. Raises ConfigError."""
    if path is None or str(path) == "-":
        return None
    if str(path) == "":
        raise ConfigError("the output path is empty")
    path = Path(path)
    for target in (path, partial_path(path)):
        if target.is_dir():
            raise ConfigError(f"output {target} is a directory: name the JSONL file to write")
    parent = path.parent
    if not parent.is_dir():
        culprit = next((a for a in (parent, *parent.parents) if a.exists()), parent)
        if culprit.is_dir():
            raise ConfigError(f"cannot write {path}: directory {parent} does not exist")
        raise ConfigError(f"cannot write {path}: {culprit} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: directory {parent} is not writable")
    return path


@contextmanager
def _interrupts_deferred():
    """Hold a Ctrl-C (SIGINT as KeyboardInterrupt) that arrives in the block until it ends, so
    that a write is whole. Only in the main thread with Python's default SIGINT handler."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        previous(signal.SIGINT, caught[0])  # raises KeyboardInterrupt


class RecordWriter:
    """Streams records as JSONL, batch by batch, to stdout (``path`` None or "-") or to ``path``.

    A file's lines go to ``<path>.partial``, which is valid JSONL after every :meth:`write`
    and is renamed to ``path`` when the ``with`` block ends normally (mode 0666 less the umask).
    If the block raises (an interrupt, an error), ``<path>.partial`` keeps the records of the
    finished writes (:attr:`written` of them; it is deleted when there are none) and ``path`` is
    left as it was. ::

        with RecordWriter("samples.jsonl") as out:
            for records in iter_records(model, prompts, num_samples=64):
                out.write(records)
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = check_output(path)
        self.partial = partial_path(self.path) if self.path is not None else None
        self._file = None
        self._done = (0, 0)  # (bytes, records) of the finished writes: one store updates both

    @property
    def written(self) -> int:
        """Records completely written so far."""
        return self._done[1]

    @property
    def where(self) -> str:
        """Where the written records are: stdout, ``<path>.partial`` or (once complete) path."""
        if self.path is None:
            return "stdout"
        return str(self.partial if self.partial is not None else self.path)

    def __enter__(self) -> "RecordWriter":
        if self.path is not None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            self._file = open(os.open(self.partial, flags, 0o666), "wb")
        return self

    def write(self, records: Sequence[dict]) -> None:
        """Append ``records`` (complete lines, flushed)."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with _interrupts_deferred():
            if self._file is None:
                sys.stdout.write(data)
                sys.stdout.flush()
                self._done = (0, self._done[1] + len(records))
            else:
                self._file.write(data.encode("utf-8"))
                self._file.flush()
                self._done = (self._file.tell(), self._done[1] + len(records))

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._file is None:
            return False
        file, self._file = self._file, None
        if exc_type is None:
            file.close()
            os.replace(self.partial, self.path)
            self.partial = None
            return False
        try:  # keep exactly the finished writes: an interrupt may have landed inside one
            file.flush()
        except OSError:
            pass
        file.truncate(self._done[0])
        file.close()
        if self.written == 0:
            remove(self.partial)
            self.partial = None
        return False


def iter_records(
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
    stats: dict | None = None,
) -> Iterator[list[dict]]:
    """The records of :func:`generate`, one list per finished round of batches, in sample
    order, on every rank (every rank must consume all of it). The settings and the prompts are
    checked before this returns (ConfigError, PromptError). ``stats``, if given, is kept equal
    to the sampler's counts (``Sampler.stats``: forward passes, rows evaluated and reused) of
    this rank's replica; records' settings say ``"reuse_scores": true`` when scores are
    reused."""
    check_run(num_samples, batch_size, seed)
    encode = tokenizer.encode if tokenizer is not None else ids_encoder
    conditions = conditions_for(prompts, encode, model.seq_length, model.graph.num_tokens)
    options = options or SamplingOptions()
    sampler = Sampler(model, options)
    settings = {**options.to_dict(), "seq_length": model.seq_length, **(extra_settings or {})}
    if sampler.reuse:
        settings["reuse_scores"] = True
    decode = tokenizer.decode if tokenizer else None

    def records() -> Iterator[list[dict]]:
        for results in iter_samples(sampler, conditions, num_samples, batch_size, seed, progress):
            if stats is not None:
                stats.update(sampler.stats)
            yield make_records(results, prompts, decode, seed, settings)

    return records()


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
    rounds = iter_records(
        model,
        prompts,
        tokenizer=tokenizer,
        num_samples=num_samples,
        batch_size=batch_size,
        seed=seed,
        options=options,
        progress=progress,
        extra_settings=extra_settings,
    )
    return [record for part in rounds for record in part]


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
