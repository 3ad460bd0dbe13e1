"""A small GPT-2 byte-level BPE encoder/decoder over an ``encoder.json`` + ``vocab.bpe`` pair.

Pure Python plus the ``regex`` package (the GPT-2 pre-tokenizer needs Unicode classes such as
``\\p{L}``, which the standard ``re`` module lacks). With the official GPT-2 files it gives the
same ids as OpenAI's encoder, tiktoken's ``gpt2`` and Hugging Face's ``GPT2Tokenizer``.
"""

from __future__ import annotations

import json
from functools import lru_cache

# The GPT-2 pre-tokenizer: contractions, letter runs, digit runs, other symbols, whitespace.
PRETOKENIZE_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _merge_word(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """Apply BPE merges to one pre-token (as a tuple of byte characters), lowest rank first."""
    while len(word) > 1:
        pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        first, second = best
        merged: list[str] = []
        i = 0
        while i < len(word):
            if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = tuple(merged)
    return word


class GPT2BPE:
    """Byte-level BPE with GPT-2's pre-tokenizer. ``encode``/``decode`` work on ids."""

    def __init__(self, vocab_file: str, merges_file: str) -> None:
        import regex

        with open(vocab_file, encoding="utf-8") as f:
            self.encoder: dict[str, int] = json.load(f)
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        with open(merges_file, encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#")]
        self.ranks = {pair: rank for rank, pair in enumerate(merges) if len(pair) == 2}
        self.byte_encoder = byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.pattern = regex.compile(PRETOKENIZE_PATTERN)
        self._cache: dict[str, list[int]] = {}

    def _encode_pretoken(self, piece: str) -> list[int]:
        ids = self._cache.get(piece)
        if ids is None:
            chars = tuple(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids = [self.encoder[tok] for tok in _merge_word(chars, self.ranks)]
            if len(self._cache) < 200_000:
                self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            ids.extend(self._encode_pretoken(piece))
        return ids

    def decode(self, ids) -> str:
        chars = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self.byte_decoder[c] for c in chars).decode("utf-8", errors="replace")
