"""Counter-based random numbers that do not depend on the batch, the parallel layout or the device.

Every uniform the float64 sampler uses is a pure function of integers: (seed, sample index, step,
position, vocabulary column). Nothing is drawn from a generator, so

* a sample is the same in any batch (its numbers never depend on the other rows),
* a tensor-parallel rank computes the numbers of its own columns only, and they equal the
  numbers a single rank holding the whole vocabulary computes for those columns,
* the CPU and CUDA streams are identical (integer arithmetic, exact on both), and a Triton kernel
  can compute them in registers next to the weights (``sedd_megatron.kernels.sampling_step``,
  which repeats the constants below; the tests check bit equality).

The construction (all arithmetic modulo 2^64; M = :func:`mix64_int`, a bijective 64-bit mixer:
xor-shift, multiply, xor-shift, multiply, xor-shift, as in SplitMix64's output function):

    sample key  K_s    = M(M(seed ^ C_SEED) + M(sample ^ C_SAMPLE))          once per run
    step key    K_st   = M(K_s + M(step ^ C_STEP))                           per draw
    row key     K_r    = M(K_st + M(position ^ C_POSITION))                  per token
    bits        h      = M(M(K_r + column * GOLDEN) ^ K_r)                   per column
    uniform     u      = max(h >> 11, 1/2) * 2^-53

The top 53 bits of h give u on the 53-bit grid of (0, 1); the grid's 0 is moved to 2^-54, so u
is never 0 or 1 and E = -log(u) is a finite, positive Exp(1) variate. The inner ``column *
GOLDEN`` Weyl step makes each row a SplitMix64 stream; the outer mix with the row key keeps two
rows apart even when their keys happen to differ by a multiple of GOLDEN (without it such rows
would repeat each other's numbers, shifted). Step ``LIMIT_STEP`` keys the draw of the limiting
distribution (uniform graph). The tests in tests/sampling/test_keyed_uniform.py check the
uniformity and independence of the stream, and that they catch a weak variant.

Tensors hold the 64-bit words as int64 (two's complement): additions and multiplications wrap
modulo 2^64 on CPU and CUDA alike, and right shifts are made logical by masking.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

LIMIT_STEP = -1  # the "step" key of the limiting distribution's draw (uniform graph)

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, odd: the column stride of the Weyl step
MIX_A = 0xBF58476D1CE4E5B9  # the multipliers of SplitMix64's output function
MIX_B = 0x94D049BB133111EB
SHIFTS = (30, 27, 31)
# the key of each field, so that (seed, sample) = (a, b) and (b, a) are different streams
C_SEED = 0x243F6A8885A308D3
C_SAMPLE = 0x13198A2E03707344
C_STEP = 0xA4093822299F31D0
C_POSITION = 0x082EFA98EC4E6C89
UNIT = 2.0**-53  # the spacing of the uniforms' grid


def signed64(value: int) -> int:
    """``value`` modulo 2^64 as a signed 64-bit integer (how an int64 tensor holds the word)."""
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


def mix64_int(x: int) -> int:
    """The mixer M on a Python integer (taken modulo 2^64): the exact reference."""
    x &= MASK64
    x = ((x ^ (x >> SHIFTS[0])) * MIX_A) & MASK64
    x = ((x ^ (x >> SHIFTS[1])) * MIX_B) & MASK64
    return x ^ (x >> SHIFTS[2])


def _xorshift_(x: torch.Tensor, k: int, tmp: torch.Tensor | None) -> torch.Tensor:
    """x ^= x >> k (logical shift of the 64-bit word), in place; ``tmp``: scratch like x."""
    shifted = torch.bitwise_right_shift(x, k, out=tmp) if tmp is not None else x >> k
    return x.bitwise_xor_(shifted.bitwise_and_((1 << (64 - k)) - 1))


def mix64_(x: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
    """The mixer M on an int64 tensor, in place (returns x); ``tmp``: optional scratch like x."""
    _xorshift_(x, SHIFTS[0], tmp).mul_(signed64(MIX_A))
    _xorshift_(x, SHIFTS[1], tmp).mul_(signed64(MIX_B))
    return _xorshift_(x, SHIFTS[2], tmp)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """The mixer M on an int64 tensor (a new tensor)."""
    return mix64_(x.to(torch.int64, copy=True))


def sample_key(seed: int, sample: int) -> int:
    """K_s of (seed, sample index), an unsigned 64-bit Python integer."""
    return mix64_int(mix64_int(seed ^ C_SEED) + mix64_int(sample ^ C_SAMPLE))


def step_code(step: int) -> int:
    """M(step ^ C_STEP), added to the sample keys at every draw."""
    return mix64_int((step & MASK64) ^ C_STEP)


def position_codes(length: int, device=None) -> torch.Tensor:
    """M(position ^ C_POSITION) for positions 0..length-1, int64 (length,)."""
    positions = torch.arange(length, dtype=torch.int64, device=device)
    return mix64_(positions.bitwise_xor_(signed64(C_POSITION)))


def column_strides(columns: torch.Tensor) -> torch.Tensor:
    """column * GOLDEN (mod 2^64) of global columns (C,), int64."""
    return columns.to(torch.int64) * signed64(GOLDEN)


@functools.lru_cache(maxsize=16)
def range_strides(start: int, stop: int, device: torch.device) -> torch.Tensor:
    """:func:`column_strides` of the columns [start, stop), computed once per (start, stop,
    device) and shared: the caller must not write to it."""
    return column_strides(torch.arange(start, stop, dtype=torch.int64, device=device))


def element_bits(
    row_keys: torch.Tensor,
    strides: torch.Tensor,
    out: torch.Tensor | None = None,
    tmp: torch.Tensor | None = None,
) -> torch.Tensor:
    """h = M(M(K_r + column * GOLDEN) ^ K_r) for row keys (R,) and the :func:`column_strides`
    (C,) of global columns: int64 (R, C), into ``out`` if given (``tmp``: scratch like it)."""
    keys = row_keys[:, None]
    h = torch.add(keys, strides[None, :], out=out)
    return mix64_(mix64_(h, tmp).bitwise_xor_(keys), tmp)


def bits_to_uniform(bits: torch.Tensor) -> torch.Tensor:
    """u = max(h >> 11, 1/2) 2^-53: float64 in [2^-54, 1 - 2^-53], never 0 or 1."""
    top = torch.bitwise_right_shift(bits, 11).bitwise_and_((1 << 53) - 1)
    return top.to(torch.float64).clamp_min_(0.5).mul_(UNIT)


def bits_to_uniform_(bits: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """:func:`bits_to_uniform` in the memory of ``bits`` (contiguous; returned as a float64
    view), with the int64 scratch ``tmp``."""
    top = torch.bitwise_right_shift(bits, 11, out=tmp).bitwise_and_((1 << 53) - 1)
    return bits.view(torch.float64).copy_(top).clamp_min_(0.5).mul_(UNIT)


def keyed_uniforms(row_keys: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The uniforms (R, C) float64 of row keys (R,) at global columns (C,)."""
    return bits_to_uniform(element_bits(row_keys, column_strides(columns)))


class KeyedStreams:
    """The keys of one sampler run: ``sample_ids`` (one per batch row) of ``seed``, sequences of
    ``length`` tokens, on ``device``. Row keys are computed on the device (no host round trip);
    the step keys of ``steps`` (the run's draws, if known) are computed once, up front."""

    def __init__(
        self, seed: int, sample_ids: Sequence[int], length: int, device, steps: Sequence[int] = ()
    ):
        self.device = torch.device(device)
        self.length = length
        keys = [signed64(sample_key(seed, int(s))) for s in sample_ids]
        self.sample_keys = torch.tensor(keys, dtype=torch.int64, device=self.device)
        self.positions = position_codes(length, self.device)
        self._step_row = {int(step): i for i, step in enumerate(dict.fromkeys(steps))}
        self._step_keys = None
        if self._step_row:
            codes = [signed64(step_code(step)) for step in self._step_row]
            codes = torch.tensor(codes, dtype=torch.int64, device=self.device)
            self._step_keys = mix64_(self.sample_keys[None, :] + codes[:, None])

    def step_keys(self, step: int) -> torch.Tensor:
        """K_st of every sample at ``step``, int64 (B,)."""
        row = self._step_row.get(step)
        if row is not None:
            return self._step_keys[row]
        return mix64_(self.sample_keys + signed64(step_code(step)))

    def rows(self, step: int) -> torch.Tensor:
        """Row keys K_r of every token of the batch at ``step``, int64 (B * L,) (row-major)."""
        keys = self.step_keys(step)[:, None] + self.positions[None, :]
        return mix64_(keys, torch.empty_like(keys)).view(-1)

    def uniforms(self, step: int, start: int, stop: int) -> torch.Tensor:
        """The uniforms of columns [start, stop) at ``step``: float64 (B, L, stop - start)."""
        columns = torch.arange(start, stop, dtype=torch.int64, device=self.device)
        u = keyed_uniforms(self.rows(step), columns)
        return u.view(-1, self.length, stop - start)

    def randint(self, step: int, high: int) -> torch.Tensor:
        """Integers in [0, high), int64 (B, L): floor(u high) of column 0 at ``step`` (the bias
        is below high * 2^-53)."""
        u = self.uniforms(step, 0, 1)[..., 0]
        return (u * high).floor_().to(torch.int64).clamp_(max=high - 1)
