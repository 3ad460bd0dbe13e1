"""Triton kernels of the float64 sampler's step: keyed uniforms, score sums and the fused race.

Rows are token rows of a (B, L, V) log-score tensor (this rank's vocabulary shard; any strides
with a unit column stride, float32 / bf16 / fp16 / float64). One program per row loops over the
columns in ``BLOCK`` tiles, reads the log-scores in their own dtype and computes in float64:

* ``_score_sums``: total_r = sum of e^{s_y} over the shard's real columns y < ``num_valid``
  except the ``excluded`` one (absorb: MASK), 0 for rows that do not move.
* ``_race_rows``: the transition weights in the affine form of
  ``sedd_megatron.diffusion.graph.SamplerAffine`` (per-row coefficients), the counter-based
  uniforms u of ``sedd_megatron.sampling.rng`` (the same integer arithmetic, so the same bits as
  the torch code on any device), E = -log(u), and the running best of w / E over columns
  [0, num_cols) of the shard: the row's best value (float64, -inf when the row does not move or
  the shard has no columns to race over) and its global column (int64, -1 then; ties go to the
  lowest column). A NaN value wins as in ``torch.argmax`` (NaN above every number, the first
  NaN column; the best value is then NaN). No weight, uniform or float64 score is ever stored.
* ``_keyed_uniforms``: the uniforms alone, (R, C) float64 (tests, and the RNG's Triton twin).

The float arithmetic is the torch code's, operation for operation, and the launches pass
``enable_fp_fusion=False`` so that no multiply-add is contracted into an FMA. The transcendental
functions (e^x, log) are the device's own: results can differ from the torch path's in the last
bit, never the uniforms. No host synchronisation: moving rows are selected inside the kernels.

The mixer constants repeat ``sedd_megatron.sampling.rng`` (which must not import triton); the
tests check that both produce the same bits.
"""

from __future__ import annotations

import torch

from .dispatch import HAVE_TRITON, jitted, triton_usable

if HAVE_TRITON:
    import triton.language as tl

_MAX_BLOCK = 1024
# 4 warps: a 1024-column float64 tile is 8 values per thread per temporary (the race kernel
# compiles to 96 registers on sm_90, no spills: tests/kernels/test_gpu_compile.py)
_NUM_WARPS = 4
_JITTED: dict[bool, tuple] = {}  # the jitted kernels per mode (dispatch.jitted)

if HAVE_TRITON:

    def _keyed_uniforms(
        keys_ptr,  # [R] int64 row keys
        out_ptr,  # [R, C] float64 out, row stride n_cols
        col_start,  # global column of output column 0
        n_cols,
        BLOCK: tl.constexpr,
    ):
        """One row, one column block: u = max(h >> 11, 1/2) 2^-53 (see sampling/rng.py)."""
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < n_cols
        key = tl.load(keys_ptr + row).to(tl.uint64, bitcast=True)
        h = key + (cols + col_start).to(tl.uint64) * 0x9E3779B97F4A7C15
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB
        h = (h ^ (h >> 31)) ^ key
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB
        h = h ^ (h >> 31)
        u = tl.maximum((h >> 11).to(tl.float64), 0.5) * 1.1102230246251565e-16
        tl.store(out_ptr + row.to(tl.int64) * n_cols + cols, u, mask=inside)

    def _score_sums(
        scores_ptr,  # [B, L, V] log-scores (strides below, unit column stride)
        active_ptr,  # [B * L] int8: the row moves
        out_ptr,  # [B * L] float64 out
        length,
        num_valid,
        excluded,  # shard-local column left out of the sum (may lie outside the shard)
        stride_b,
        stride_l,
        BLOCK: tl.constexpr,
    ):
        """One row: sum over y < num_valid, y != excluded of e^{s_y} in float64."""
        row = tl.program_id(0)
        base = scores_ptr + (row // length).to(tl.int64) * stride_b
        base += (row % length).to(tl.int64) * stride_l
        n = tl.where(tl.load(active_ptr + row) != 0, num_valid, 0)
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        for c0 in range(0, n, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            inside = cols < n
            s = tl.exp(tl.load(base + cols, mask=inside, other=0.0).to(tl.float64))
            acc += tl.where(inside & (cols != excluded), s, 0.0)
        tl.store(out_ptr + row, tl.sum(acc, axis=0))

    def _race_rows(
        scores_ptr,  # [B, L, V] log-scores (strides below, unit column stride)
        active_ptr,  # [B * L] int8: the row moves
        keys_ptr,  # [B * L] int64 row keys
        coef_ptr,  # [B * L, 6] float64: scale, shift, gain, special scale, shift, gain
        special_ptr,  # [B * L] int64 global special column (-1: none)
        best_ptr,  # [B * L] float64 out
        index_ptr,  # [B * L] int64 out
        length,
        start,  # global column of shard column 0
        num_cols,  # shard columns raced over: [0, num_cols)
        stride_b,
        stride_l,
        BLOCK: tl.constexpr,
    ):
        """One row: max over columns of w / E and its global column (module docstring)."""
        row = tl.program_id(0)
        base = scores_ptr + (row // length).to(tl.int64) * stride_b
        base += (row % length).to(tl.int64) * stride_l
        n = tl.where(tl.load(active_ptr + row) != 0, num_cols, 0)
        key = tl.load(keys_ptr + row).to(tl.uint64, bitcast=True)
        coef = coef_ptr + row.to(tl.int64) * 6
        scale = tl.load(coef)
        shift = tl.load(coef + 1)
        gain = tl.load(coef + 2)
        special_scale = tl.load(coef + 3)
        special_shift = tl.load(coef + 4)
        special_gain = tl.load(coef + 5)
        special = tl.load(special_ptr + row) - start  # shard-local
        best = tl.full([BLOCK], float("-inf"), dtype=tl.float64)
        best_col = tl.full([BLOCK], -1, dtype=tl.int32)
        for c0 in range(0, n, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            inside = cols < n
            s = tl.exp(tl.load(base + cols, mask=inside, other=0.0).to(tl.float64))
            w = (scale * s + shift) * gain
            w_special = (special_scale * s + special_shift) * special_gain
            w = tl.where(cols == special, w_special, w)
            h = key + (cols + start).to(tl.uint64) * 0x9E3779B97F4A7C15
            h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9
            h = (h ^ (h >> 27)) * 0x94D049BB133111EB
            h = (h ^ (h >> 31)) ^ key
            h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9
            h = (h ^ (h >> 27)) * 0x94D049BB133111EB
            h = h ^ (h >> 31)
            u = tl.maximum((h >> 11).to(tl.float64), 0.5) * 1.1102230246251565e-16
            value = w / -tl.log(u)
            # torch.argmax's order: NaN above every number. Strict, and nothing replaces a NaN:
            # each lane keeps its first best column (its first NaN, if any)
            better = inside & (best == best) & ((value > best) | (value != value))
            best = tl.where(better, value, best)
            best_col = tl.where(better, cols, best_col)
        lane_nan = best != best
        any_nan = tl.max(lane_nan.to(tl.int32), axis=0) > 0
        top = tl.max(tl.where(lane_nan, float("-inf"), best), axis=0)
        # the lowest column reaching the maximum, or the first NaN (-1 when nothing was raced)
        hit = tl.where(any_nan, lane_nan, best == top)
        col = tl.min(tl.where(hit, best_col, 2147483647), axis=0)
        top = tl.where(any_nan, float("nan"), top)
        tl.store(best_ptr + row, top)
        tl.store(index_ptr + row, tl.where(col >= 0, col.to(tl.int64) + start, -1))


def _kernels() -> tuple:
    """(keyed uniforms, score sums, race), ``triton.jit``-decorated on first launch for the
    current mode: see ``dispatch.jitted``."""
    return jitted(_JITTED, _keyed_uniforms, _score_sums, _race_rows)


def _block(columns: int) -> int:
    return min(_MAX_BLOCK, max(16, 1 << (max(columns, 1) - 1).bit_length()))


def _require(*tensors) -> None:
    if not triton_usable(*tensors):
        raise RuntimeError(
            "the Triton sampling step needs triton and CUDA tensors (or CPU tensors under "
            "Triton's interpreter with SEDD_TRITON_ON_CPU=1)"
        )


def _score_view(scores: torch.Tensor) -> torch.Tensor:
    """(B, L, V) with a unit column stride (a copy only when the columns are strided)."""
    if scores.dim() != 3:
        raise ValueError(f"log-scores must be (B, L, V), got shape {tuple(scores.shape)}")
    return scores if scores.stride(-1) == 1 else scores.contiguous()


def keyed_uniforms_triton(row_keys: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The uniforms of ``sedd_megatron.sampling.rng.keyed_uniforms`` for columns
    [start, stop): float64 (R, stop - start)."""
    _require(row_keys)
    keys = row_keys.to(torch.int64).contiguous()
    n_cols = stop - start
    out = torch.empty(keys.shape[0], n_cols, dtype=torch.float64, device=keys.device)
    if out.numel():
        block = _block(n_cols)
        uniforms, _, _ = _kernels()
        grid = (keys.shape[0], -(-n_cols // block))
        uniforms[grid](keys, out, start, n_cols, BLOCK=block, num_warps=_NUM_WARPS)
    return out


def score_sums_triton(
    scores: torch.Tensor, num_valid: int, excluded: int | None, active: torch.Tensor
) -> torch.Tensor:
    """Per row of scores (B, L, V): sum of e^{s_y} over y < num_valid, y != excluded (shard
    columns), float64 (B * L,); 0 where ``active`` (B * L,) is False."""
    _require(scores, active)
    scores = _score_view(scores)
    batch, length, vocab = scores.shape
    rows = batch * length
    out = torch.zeros(rows, dtype=torch.float64, device=scores.device)
    num_valid = max(0, min(int(num_valid), vocab))
    if rows and num_valid:
        block = _block(num_valid)
        _, sums, _ = _kernels()
        sums[(rows,)](
            scores,
            active.reshape(rows).to(torch.int8),
            out,
            length,
            num_valid,
            -1 if excluded is None else int(excluded),
            scores.stride(0),
            scores.stride(1),
            BLOCK=block,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )
    return out


def race_triton(
    scores: torch.Tensor,
    start: int,
    num_cols: int,
    row_keys: torch.Tensor,
    coefficients: torch.Tensor,
    special: torch.Tensor,
    active: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused race over shard columns [0, num_cols) (global start + column) of scores
    (B, L, V): (best w / E float64 (B * L,), its global column int64 (B * L,)); -inf / -1 for
    rows that do not move; NaN and the first NaN column for a row with a NaN value (as
    ``torch.argmax``). ``coefficients`` (B * L, 6) float64 and ``special`` (B * L,) int64 are
    the rows' ``SamplerAffine`` (see ``sedd_megatron.sampling.step.pack_affine``)."""
    _require(scores, row_keys, coefficients, special, active)
    scores = _score_view(scores)
    batch, length, vocab = scores.shape
    rows = batch * length
    best = torch.full((rows,), float("-inf"), dtype=torch.float64, device=scores.device)
    index = torch.full((rows,), -1, dtype=torch.int64, device=scores.device)
    num_cols = max(0, min(int(num_cols), vocab))
    if rows and num_cols:
        block = _block(num_cols)
        _, _, race = _kernels()
        race[(rows,)](
            scores,
            active.reshape(rows).to(torch.int8),
            row_keys.to(torch.int64).contiguous(),
            coefficients.to(torch.float64).contiguous(),
            special.to(torch.int64).contiguous(),
            best,
            index,
            length,
            int(start),
            num_cols,
            scores.stride(0),
            scores.stride(1),
            BLOCK=block,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )
    return best, index
