"""Tokenize text or JSONL files into Megatron indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``).

:func:`output_prefixes` names the datasets: the prefix itself for one key, or, with
``megatron_names`` (what ``tools/preprocess_data.py`` uses), Megatron's own
``preprocess_data.py`` naming ``{prefix}_{key}_document`` for every key (``--output-prefix
/data/corpus`` writes ``/data/corpus_text_document.bin/.idx``).

Every document becomes one sequence of token ids followed by the tokenizer's end-of-document
id. Input is checked before any work starts (missing/empty files, output directory); document
errors (invalid JSON, missing key, bad encoding, ids outside the vocabulary) stop the run with a
:class:`DataError` naming the file and line. Output is written under temporary names and renamed
into place only when complete, so a failed run leaves no ``.bin``/``.idx`` behind.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy

from sedd_megatron.atomic import atomic_path
from sedd_megatron.datasets.checks import check_encoding, check_int, check_output_file
from sedd_megatron.datasets.tokenizers import TextTokenizer
from sedd_megatron.errors import DataError

JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
_BATCH_DOCS = 128


@dataclass
class Doc:
    key: str
    text: str
    where: str  # "file:line" for error messages


@dataclass
class PreprocessStats:
    prefixes: dict[str, str] = field(default_factory=dict)  # key -> output prefix
    documents: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)  # including the EOS tokens
    skipped_empty: int = 0


def iter_documents(
    path: str, json_keys: Sequence[str] | None, per_line: bool, encoding: str = "utf-8"
) -> Iterator[Doc]:
    """Yield the documents of one input file. JSONL when ``json_keys`` is set (one document per
    key per line); text otherwise: the whole file, or each non-blank line when ``per_line``."""
    try:
        with open(path, encoding=encoding, newline="") as f:
            if not json_keys and not per_line:
                yield Doc("text", f.read(), path)
                return
            for lineno, line in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                if json_keys:
                    yield from _json_docs(line, json_keys, where)
                elif line.strip():
                    yield Doc("text", line.rstrip("\r\n"), where)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid {encoding} text (byte {e.start}): {e.reason}") from None


def _json_docs(line: str, json_keys: Sequence[str], where: str) -> Iterator[Doc]:
    if not line.strip():
        return
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in json_keys:
        if key not in record:
            found = ", ".join(sorted(record)) or "none"
            raise DataError(f"{where}: JSON key {key!r} missing (keys found: {found})")
        if not isinstance(record[key], str):
            raise DataError(f"{where}: JSON key {key!r} is not a string")
        yield Doc(key, record[key], where)


def output_prefixes(
    output_prefix: str, keys: Sequence[str], megatron_names: bool = False
) -> dict[str, str]:
    """The dataset prefix of each JSON key (text inputs have the key ``text``).

    ``megatron_names``: ``{output_prefix}_{key}_document`` for every key, as Megatron's
    ``tools/preprocess_data.py`` writes them. Otherwise ``output_prefix`` itself for one key and
    ``{output_prefix}_{key}`` for several."""
    if megatron_names:
        return {k: f"{output_prefix}_{k}_document" for k in keys}
    return {k: output_prefix if len(keys) == 1 else f"{output_prefix}_{k}" for k in keys}


def check_inputs(
    inputs: Sequence[str],
    output_prefix: str,
    json_keys: Sequence[str] | None = None,
    megatron_names: bool = False,
) -> None:
    """Fail early on a missing, unreadable or empty input, or outputs that cannot be written
    (a missing or read-only directory, a directory in the way of ``PREFIX.bin``/``.idx``, an
    output that is also an input)."""
    if not inputs:
        raise DataError("no input files given")
    for path in inputs:
        if not os.path.exists(path):
            raise DataError(f"input file not found: {path}")
        if not os.path.isfile(path):
            raise DataError(f"input is not a regular file: {path}")
        if not os.access(path, os.R_OK):
            raise DataError(f"no permission to read input file {path}")
        if os.path.getsize(path) == 0:
            raise DataError(f"input file is empty: {path}")
    if not output_prefix or output_prefix.endswith(("/", os.sep)):
        raise DataError(f"output prefix {output_prefix!r} must name files (PREFIX.bin/.idx)")
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    if not os.path.isdir(out_dir):
        raise DataError(f"output directory does not exist: {out_dir} (for {output_prefix})")
    prefixes = output_prefixes(output_prefix, list(json_keys or ["text"]), megatron_names)
    sources = {os.path.realpath(p) for p in inputs}
    for prefix in prefixes.values():
        for path in (f"{prefix}.bin", f"{prefix}.idx"):
            check_output_file(path, "output", error=DataError)
            if os.path.realpath(path) in sources:
                raise DataError(f"output {path} is also an input file")


def check_preprocess_settings(
    *,
    workers: int = 1,
    encoding: str = "utf-8",
    json_keys: Sequence[str] | None = None,
    names: dict | None = None,
) -> None:
    """``workers`` positive, ``encoding`` a known codec, ``json_keys`` non-empty distinct
    strings. ``names`` maps a keyword to how it is shown (the tool passes its flags)."""
    names = names or {}
    check_int(workers, names.get("workers", "workers"))
    check_encoding(encoding, names.get("encoding", "encoding"))
    if json_keys is not None:
        flag = names.get("json_keys", "json_keys")
        if not json_keys or not all(isinstance(k, str) and k for k in json_keys):
            raise DataError(f"{flag}: give one or more non-empty JSON keys")
        if len(set(json_keys)) != len(json_keys):
            raise DataError(f"{flag}: a key is named twice: {list(json_keys)}")


_WORKER_TOKENIZER: TextTokenizer | None = None


def _init_worker(tokenizer: TextTokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _encode_batch(texts: list[str]) -> list[list[int]]:
    return [_WORKER_TOKENIZER.encode(t) for t in texts]


def _batches(docs: Iterator[Doc], size: int) -> Iterator[list[Doc]]:
    while batch := list(itertools.islice(docs, size)):
        yield batch


def preprocess(
    inputs: Sequence[str],
    output_prefix: str,
    tokenizer: TextTokenizer,
    *,
    json_keys: Sequence[str] | None = None,
    per_line: bool = False,
    workers: int = 1,
    encoding: str = "utf-8",
    progress: bool = True,
    megatron_names: bool = False,
) -> PreprocessStats:
    """Tokenize ``inputs`` into ``output_prefix``.bin/.idx, appending EOS to every document.

    Files ending in .json/.jsonl/.ndjson are JSONL with ``json_keys`` (default ``["text"]``);
    other files are text (one document per file, or per non-blank line with ``per_line``). Each
    key gets its own dataset, named by :func:`output_prefixes` (``megatron_names``: Megatron's
    ``{output_prefix}_{key}_document``). Empty documents are skipped. ``workers`` > 1
    tokenizes in that many processes; the output is identical.
    """
    inputs = [os.fspath(p) for p in inputs]
    output_prefix = os.fspath(output_prefix)
    check_preprocess_settings(workers=workers, encoding=encoding, json_keys=json_keys)
    check_inputs(inputs, output_prefix, json_keys, megatron_names)
    is_json = [bool(json_keys) or p.lower().endswith(JSON_SUFFIXES) for p in inputs]
    keys = list(json_keys or ["text"]) if any(is_json) else ["text"]
    if any(is_json) and not all(is_json) and keys != ["text"]:
        raise DataError("mixing text and JSONL inputs needs json_keys == ['text']")
    prefixes = output_prefixes(output_prefix, keys, megatron_names)
    docs = itertools.chain.from_iterable(
        iter_documents(p, keys if j else None, per_line, encoding)
        for p, j in zip(inputs, is_json, strict=True)
    )
    stats = PreprocessStats(prefixes=dict(prefixes))
    with _writers(prefixes, tokenizer.vocab_size) as writer:
        _run(docs, tokenizer, workers, writer, stats, progress)
        if not any(stats.documents.values()):
            raise DataError(f"no non-empty documents in {', '.join(inputs)}")
    return stats


def _run(docs, tokenizer, workers, writer, stats, progress) -> None:
    from tqdm import tqdm

    pool = None
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer,))
    _init_worker(tokenizer)
    try:
        batches = _batches(docs, _BATCH_DOCS)
        if pool is None:
            results = ((b, _encode_batch([d.text for d in b])) for b in batches)
        else:
            results = _encode_in_pool(pool, batches, window=4 * workers)
        desc = f"tokenizing {os.path.basename(writer.final[next(iter(writer.final))])}"
        with tqdm(unit="doc", desc=desc, disable=not progress, mininterval=1) as bar:
            for batch, ids_list in results:
                for doc, ids in zip(batch, ids_list, strict=True):
                    if not doc.text:
                        stats.skipped_empty += 1
                        continue
                    _check_ids(ids, tokenizer.vocab_size, doc.where)
                    n = writer.add(doc.key, ids + [tokenizer.eos_id])
                    stats.documents[doc.key] = stats.documents.get(doc.key, 0) + 1
                    stats.tokens[doc.key] = stats.tokens.get(doc.key, 0) + n
                bar.update(len(batch))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _encode_in_pool(pool, batches, window: int):
    """Encode batches in worker processes, in order; parsing stays in this process and thread."""
    pending: deque = deque()
    for batch in batches:
        pending.append((batch, pool.apply_async(_encode_batch, ([d.text for d in batch],))))
        if len(pending) >= window:
            batch, result = pending.popleft()
            yield batch, result.get()
    while pending:
        batch, result = pending.popleft()
        yield batch, result.get()


def _check_ids(ids: list[int], vocab_size: int, where: str) -> None:
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i in ids if i < 0 or i >= vocab_size)
        raise DataError(f"{where}: token id {bad} outside the vocabulary (size {vocab_size})")


class _Writers:
    """One IndexedDatasetBuilder per key (made by :func:`_writers`); ``final``: the prefixes."""

    def __init__(self, dtype, builders: dict, final: dict[str, str]) -> None:
        self.dtype = dtype
        self.builders = builders
        self.final = final

    def add(self, key: str, ids: list[int]) -> int:
        self.builders[key].add_document(numpy.asarray(ids, dtype=self.dtype), [len(ids)])
        return len(ids)


@contextlib.contextmanager
def _writers(prefixes: dict[str, str], vocab_size: int) -> Iterator[_Writers]:
    """_Writers for ``{prefix}.bin``/``.idx`` per key, on temporary names (atomic_path) while the
    block runs: finalized and renamed into place when it succeeds, deleted when it fails."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    dtype = DType.optimal_dtype(vocab_size)
    builders, idx_paths = {}, {}
    with contextlib.ExitStack() as stack:
        # Exits run last-in first-out: key by key in order, each .bin renamed before its .idx
        # (a reader needs the .idx to start), each builder's file closed before that.
        for key in reversed(prefixes):
            idx_paths[key] = stack.enter_context(atomic_path(prefixes[key] + ".idx"))
            bin_path = stack.enter_context(atomic_path(prefixes[key] + ".bin"))
            builders[key] = IndexedDatasetBuilder(os.fspath(bin_path), dtype=dtype)
            stack.callback(builders[key].data_file.close)
        yield _Writers(dtype, builders, dict(prefixes))
        for key, builder in builders.items():
            builder.finalize(os.fspath(idx_paths[key]))
