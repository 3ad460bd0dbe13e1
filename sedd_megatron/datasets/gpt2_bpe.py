"""A small GPT-2 byte-level BPE encoder/decoder over an ``encoder.json`` + ``vocab.bpe`` pair.

Pure Python plus the ``regex`` package (the GPT-2 pre-tokenizer needs Unicode classes such as
``\\p{L}``, which the standard ``re`` module lacks). With the official GPT-2 files it gives the
same ids as OpenAI's encoder, tiktoken's ``gpt2`` and Hugging Face's ``GPT2Tokenizer``.
"""

from __future__ import annotations

import json
from functools import lru_cache

from sedd_megatron.errors import DataError

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


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise DataError(
            f"{what} {path} is not UTF-8 text (byte {err.start}): not a {what}"
        ) from None
    except OSError as err:
        raise DataError(f"cannot read {what} {path}: {err.strerror or err}") from None


def read_encoder(path: str) -> dict[str, int]:
    """The GPT-2 ``encoder.json`` at ``path``: a JSON object mapping every token to its id, the
    ids 0 .. N-1 once each, the 256 byte symbols included; DataError naming the file if not."""
    what = "GPT-2 vocab file (encoder.json)"
    text = _read_text(path, what)
    try:
        encoder = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{what} {path} is not valid JSON ({err.msg} at line {err.lineno}, column "
            f"{err.colno})"
        ) from None
    if not isinstance(encoder, dict) or not encoder:
        raise DataError(f"{what} {path} must be a non-empty JSON object of token -> id")
    ids = list(encoder.values())
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise DataError(f"{what} {path}: every id must be an integer")
    if sorted(ids) != list(range(len(ids))):
        raise DataError(f"{what} {path}: the ids must be 0 .. {len(ids) - 1}, each once")
    missing = [c for c in byte_to_unicode().values() if c not in encoder]
    if missing:
        raise DataError(
            f"{what} {path} lacks {len(missing)} of the 256 byte tokens (e.g. {missing[0]!r}): "
            "not a byte-level BPE vocabulary"
        )
    return encoder


def read_merges(path: str, encoder: dict[str, int]) -> dict[tuple[str, str], int]:
    """The BPE merges (``vocab.bpe``/``merges.txt``) at ``path`` as pair -> rank (its line
    number among the merges): every line but a ``#version`` header and blank lines is two
    symbols whose merge is in ``encoder``. (Merges such as ``# #`` are merges, not comments.)"""
    what = "GPT-2 merges file (vocab.bpe)"
    ranks: dict[tuple[str, str], int] = {}
    rank = 0
    for lineno, line in enumerate(_read_text(path, what).split("\n"), start=1):
        if not line.strip() or (lineno == 1 and line.startswith("#version")):
            continue  # the header; later lines starting with "#" are merges of "#" symbols
        pair = tuple(line.split())
        if len(pair) != 2:
            raise DataError(f"{path}:{lineno}: a {what} line is two symbols, got {line[:60]!r}")
        if pair[0] + pair[1] not in encoder:
            raise DataError(
                f"{path}:{lineno}: merge {line.strip()[:60]!r} gives a token that is not in the "
                "vocab file (the vocab and merges files do not belong together)"
            )
        ranks[pair] = rank
        rank += 1
    if not ranks:
        raise DataError(f"{what} {path} holds no merges")
    return ranks


class GPT2BPE:
    """Byte-level BPE with GPT-2's pre-tokenizer. ``encode``/``decode`` work on ids."""

    def __init__(self, vocab_file: str, merges_file: str) -> None:
        import regex

        self.encoder = read_encoder(vocab_file)
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.ranks = read_merges(merges_file, self.encoder)
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
