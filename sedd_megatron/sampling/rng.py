"""Random numbers that do not depend on the batch or the parallel layout.

Every uniform the sampler draws is a function of (seed, sample index, step, column tile): one
torch generator is re-seeded per tile with a hash of these four numbers and fills a
(sequence length, tile width) block of U[0, 1). Column tiles are fixed slices of the vocabulary
([k C, (k + 1) C) with C = :func:`tile_width` of the vocabulary size), so a tensor-parallel rank
draws only the tiles that overlap its shard and gets the same numbers for its columns as a
single rank holding the whole vocabulary; a sample gets the same numbers in any batch.
Streams differ between devices (CPU and CUDA generators differ), not between layouts.
"""

import hashlib
import struct

import torch

MAX_TILE_WIDTH = 4096
LIMIT_STEP = -1  # the "step" key of the limiting distribution's draw (uniform graph)


def tile_width(vocab_rows: int) -> int:
    """Columns per tile: 4096, or the whole vocabulary when it is smaller."""
    return min(MAX_TILE_WIDTH, vocab_rows)


def tile_seed(seed: int, sample: int, step: int, tile: int) -> int:
    """A 63-bit generator seed for one (seed, sample index, step, column tile)."""
    digest = hashlib.blake2b(struct.pack("<4q", seed, sample, step, tile), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


class KeyedUniforms:
    """Draws keyed blocks of uniforms on one device (one generator, re-seeded per block)."""

    def __init__(self, device, seed: int):
        self.device = torch.device(device)
        self.seed = seed
        self.generator = torch.Generator(device=self.device)

    def tile(self, sample: int, step: int, tile: int, rows: int, width: int, dtype=torch.float64):
        """U[0, 1) of shape (rows, width) for this (sample, step, tile)."""
        self.generator.manual_seed(tile_seed(self.seed, sample, step, tile))
        return torch.rand((rows, width), dtype=dtype, device=self.device, generator=self.generator)

    def randint(self, sample: int, step: int, high: int, length: int) -> torch.Tensor:
        """Integers in [0, high) of shape (length,) for this (sample, step)."""
        self.generator.manual_seed(tile_seed(self.seed, sample, step, 0))
        return torch.randint(0, high, (length,), device=self.device, generator=self.generator)
