"""Context parallelism layout: Megatron's two-chunk ("zigzag") split of the sequence.

The sequence is cut into 2 * cp chunks and CP rank r holds chunks r and 2cp - 1 - r, the layout
Megatron's rotary embedding assumes (``get_pos_emb_on_this_cp_rank``). SEDD's attention is
bidirectional, so key order does not matter and a rank's queries attend to the all-gathered keys.
"""

import torch


def _chunk_index(cp_rank: int, cp_size: int) -> list[int]:
    return [cp_rank, 2 * cp_size - 1 - cp_rank]


def split_for_context_parallel(x: torch.Tensor, cp_rank: int, cp_size: int, dim: int = 1):
    """This CP rank's part of ``x`` along ``dim`` (the sequence dimension)."""
    if cp_size == 1:
        return x
    if x.shape[dim] % (2 * cp_size):
        raise ValueError(
            f"sequence length {x.shape[dim]} must be divisible by 2 * context parallel size "
            f"({2 * cp_size})"
        )
    chunks = x.chunk(2 * cp_size, dim=dim)
    return torch.cat([chunks[i] for i in _chunk_index(cp_rank, cp_size)], dim=dim)


def merge_from_context_parallel(parts: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`split_for_context_parallel` given every rank's part, in rank order."""
    cp_size = len(parts)
    if cp_size == 1:
        return parts[0]
    chunks: list[torch.Tensor | None] = [None] * (2 * cp_size)
    for rank, part in enumerate(parts):
        first, second = part.chunk(2, dim=dim)
        low, high = _chunk_index(rank, cp_size)
        chunks[low], chunks[high] = first, second
    return torch.cat(chunks, dim=dim)
