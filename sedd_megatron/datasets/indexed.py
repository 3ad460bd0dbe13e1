"""Checks of Megatron indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``) without Megatron: the
index header and sizes, and the range of the token ids, so that a tool can reject a bad or
mismatched dataset before it loads a model or starts work.

The ``.idx`` layout (Megatron-Core's ``IndexedDataset``, version 1): the 9-byte magic
``MMIDIDX\\0\\0``, the version (<Q), the dtype code (<B), the sequence count (<Q), the document
count (<Q), then int32 sequence lengths, int64 sequence pointers (byte offsets into ``.bin``) and
int64 document indices. ``.bin`` holds the tokens of every sequence back to back.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from sedd_megatron.errors import DataError

INDEX_MAGIC = b"MMIDIDX\x00\x00"
_HEADER = struct.Struct("<9sQBQQ")
_DTYPES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}


@dataclass(frozen=True)
class IndexInfo:
    """What an indexed dataset's ``.idx`` says, checked against its ``.bin``."""

    prefix: str
    dtype: np.dtype
    sequence_lengths: np.ndarray  # int32, one per sequence
    sequence_pointers: np.ndarray  # int64 byte offsets into .bin
    documents: int

    @property
    def tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))


def indexed_files(prefix) -> tuple[str, str]:
    prefix = os.fspath(prefix)
    return f"{prefix}.bin", f"{prefix}.idx"


def is_indexed_prefix(prefix) -> bool:
    """Whether both ``PREFIX.bin`` and ``PREFIX.idx`` are files."""
    return all(os.path.isfile(p) for p in indexed_files(prefix))


def read_index(prefix, error=DataError) -> IndexInfo:
    """Read and check ``PREFIX.idx`` (header, sizes) against ``PREFIX.bin``; ``error`` names
    the file and the problem."""
    bin_path, idx_path = indexed_files(prefix)
    for path in (bin_path, idx_path):
        if not os.path.isfile(path):
            raise error(f"indexed dataset file not found: {path}")
    try:
        with open(idx_path, "rb") as f:
            raw = f.read(_HEADER.size)
            if len(raw) < _HEADER.size:
                raise error(f"{idx_path}: not a Megatron indexed dataset index (too short)")
            magic, version, code, sequences, documents = _HEADER.unpack(raw)
            if magic != INDEX_MAGIC:
                raise error(f"{idx_path}: not a Megatron indexed dataset index (bad header)")
            if version != 1:
                raise error(f"{idx_path}: unsupported index version {version} (expected 1)")
            if code not in _DTYPES:
                raise error(f"{idx_path}: unknown token dtype code {code}")
            size = os.fstat(f.fileno()).st_size
            need = _HEADER.size + 12 * sequences + 8 * documents
            if need > size:
                raise error(
                    f"{idx_path}: truncated index ({size} bytes; its header promises "
                    f"{sequences} sequences, {documents} document indices: {need} bytes)"
                )
            lengths = np.fromfile(f, dtype="<i4", count=sequences)
            pointers = np.fromfile(f, dtype="<i8", count=sequences)
    except OSError as err:
        raise error(f"cannot read {idx_path}: {err.strerror or err}") from None
    dtype = np.dtype(_DTYPES[code])
    bin_size = os.path.getsize(bin_path)
    if sequences and (lengths.min() < 0 or pointers.min() < 0):
        raise error(f"{idx_path}: negative sequence length or pointer (a corrupt index)")
    end = int((pointers + lengths.astype(np.int64) * dtype.itemsize).max()) if sequences else 0
    if end > bin_size:
        raise error(
            f"{bin_path}: {bin_size} bytes, but its index points to byte {end} (truncated, or "
            "the .bin and .idx do not belong together)"
        )
    return IndexInfo(os.fspath(prefix), dtype, lengths, pointers, max(0, int(documents) - 1))


def token_id_range(prefix, max_tokens: int | None = None, error=DataError) -> tuple[int, int]:
    """(min, max) token id of the first ``max_tokens`` tokens (default: all) of the dataset
    (:func:`read_tokens`); ``(0, -1)`` for an empty dataset."""
    stream, _ = read_tokens(prefix, max_tokens, error)
    stream = stream[:max_tokens]  # whole sequences were read; only these tokens count
    if stream.size == 0:
        return 0, -1
    return int(stream.min()), int(stream.max())


def read_tokens(prefix, max_tokens: int | None = None, error=DataError) -> tuple[np.ndarray, int]:
    """(the sequences concatenated in order as int64, the number of sequences read), reading
    sequences until ``max_tokens`` tokens are in (default: all)."""
    info = read_index(prefix, error)
    if not np.issubdtype(info.dtype, np.integer):
        raise error(f"{info.prefix}.idx: token dtype {info.dtype} is not an integer type")
    size = os.path.getsize(f"{info.prefix}.bin") // info.dtype.itemsize
    if size == 0:
        return np.zeros(0, dtype=np.int64), 0
    tokens = np.memmap(f"{info.prefix}.bin", dtype=info.dtype, mode="r", shape=(size,))
    parts, total = [], 0
    for pointer, length in zip(info.sequence_pointers, info.sequence_lengths, strict=True):
        start = int(pointer) // info.dtype.itemsize
        parts.append(np.asarray(tokens[start : start + int(length)], dtype=np.int64))
        total += int(length)
        if max_tokens is not None and total >= max_tokens:
            break
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return stream, len(parts)


def check_token_ids(prefix, vocab_size: int, max_tokens: int | None = None, error=DataError):
    """Raise ``error`` unless every token id (of the first ``max_tokens``) is in
    [0, ``vocab_size``)."""
    lo, hi = token_id_range(prefix, max_tokens, error)
    if lo < 0 or hi >= vocab_size:
        raise error(
            f"indexed dataset {os.fspath(prefix)!r} has token ids in [{lo}, {hi}], outside the "
            f"vocabulary of {vocab_size} (0 .. {vocab_size - 1}; a different tokenizer?)"
        )
