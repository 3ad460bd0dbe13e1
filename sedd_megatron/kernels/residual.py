"""Fused gated residual with bias and dropout (forward and backward Triton kernels).

For branch and residual ``[..., b, H]`` flattened to rows ``[R, H]`` (row r belongs to batch
r % b), bias ``[H]`` (optional) and gate ``[b, H]``, all math in fp32:

    v    = branch + bias
    keep = rand(seed, i) >= p            (i: flat element index; only when training and p > 0)
    d    = v * keep / (1 - p)            (inverted dropout; d = v without dropout)
    out  = residual + gate[b] * d        (stored in residual.dtype)

Backward:

    d_residual = dout
    d_branch   = dout * gate[b] * keep / (1 - p)
    d_bias     = sum over all rows of d_branch
    d_gate[b]  = sum over batch b's rows of dout * d

The dropout mask comes from Triton's counter-based Philox RNG, ``tl.rand(seed, i)``. The seed is
a one-element int64 tensor drawn over all 2^64 values (:func:`dropout_seed`; Philox takes every
bit of it) on the op's device from torch's default generator and read inside the kernels, so
there is no host sync, ``torch.manual_seed`` makes the mask reproducible, and a replay after
restoring torch's RNG state (activation recomputation) draws the same seed and mask. The mask
is never stored: the backward regenerates it from the seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import (
    HAVE_TRITON,
    cdiv,
    jitted,
    kernel_dtypes_ok,
    next_power_of_2,
    num_warps_for,
    plain_dispatch,
    row_chunks,
    rows_of,
    triton_usable,
)

# Columns per program of the element-wise grids.
MAX_BLOCK = 1024

if HAVE_TRITON:
    import triton.language as tl

    # Kernels are plain functions here, decorated with triton.jit on first launch (``_kernels``).
    # Both draw the dropout factor keep / (1 - p), keep = rand(seed, flat index) >= p, the same way.

    def _gated_residual_fwd(
        branch_ptr,
        bias_ptr,
        gate_ptr,
        res_ptr,
        out_ptr,
        seed_ptr,
        n_batch,
        H,
        stride_gate,
        p,
        keep_scale,
        HAS_BIAS: tl.constexpr,
        DROPOUT: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        """One row, one column block: out = residual + gate[b] * dropout(branch + bias)."""
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        mask = cols < H
        offs = row.to(tl.int64) * H + cols

        v = tl.load(branch_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            v += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if DROPOUT:
            v = v * tl.where(tl.rand(tl.load(seed_ptr), offs) >= p, keep_scale, 0.0)
        gate = tl.load(gate_ptr + (row % n_batch) * stride_gate + cols, mask=mask, other=0.0)
        res = tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = res + gate.to(tl.float32) * v
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)

    def _gated_residual_bwd(
        dout_ptr,
        branch_ptr,
        bias_ptr,
        gate_ptr,
        seed_ptr,
        dbranch_ptr,
        part_dgate_ptr,
        part_dbias_ptr,
        n_seq,
        n_batch,
        H,
        stride_gate,
        rows_per_chunk,
        p,
        keep_scale,
        HAS_BIAS: tl.constexpr,
        DROPOUT: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        """Rows s*b + batch for s in this chunk, one column block: d_branch, plus partial
        sums of dout * dropout(branch + bias) (d_gate) and of d_branch (d_bias)."""
        batch = tl.program_id(0)
        chunk = tl.program_id(1)
        cols = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
        mask = cols < H

        gate = tl.load(gate_ptr + batch * stride_gate + cols, mask=mask, other=0.0)
        gate = gate.to(tl.float32)
        bias = tl.zeros([BLOCK_H], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if DROPOUT:
            seed = tl.load(seed_ptr)
        acc_dgate = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc_dbias = tl.zeros([BLOCK_H], dtype=tl.float32)

        for i in range(0, rows_per_chunk):
            s = chunk * rows_per_chunk + i
            row_mask = mask & (s < n_seq)
            offs = (s.to(tl.int64) * n_batch + batch) * H + cols
            dout = tl.load(dout_ptr + offs, mask=row_mask, other=0.0).to(tl.float32)
            v = tl.load(branch_ptr + offs, mask=row_mask, other=0.0).to(tl.float32) + bias
            dbranch = dout * gate
            if DROPOUT:
                factor = tl.where(tl.rand(seed, offs) >= p, keep_scale, 0.0)
                v = v * factor
                dbranch = dbranch * factor
            tl.store(dbranch_ptr + offs, dbranch.to(dbranch_ptr.dtype.element_ty), mask=row_mask)
            acc_dgate += dout * v
            acc_dbias += dbranch

        part = (chunk * n_batch + batch).to(tl.int64) * H + cols
        tl.store(part_dgate_ptr + part, acc_dgate, mask=mask)
        if HAS_BIAS:
            tl.store(part_dbias_ptr + part, acc_dbias, mask=mask)


_JITTED: dict = {}


def _kernels():
    """(forward, backward) kernels, jitted for the current mode."""
    return jitted(_JITTED, _gated_residual_fwd, _gated_residual_bwd)


def _keep_scale(p: float) -> float:
    """1 / (1 - p), or 0 when everything is dropped (p == 1)."""
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def backward_grid(n_seq: int, n_batch: int, hidden: int) -> tuple[tuple[int, int, int], int, int]:
    """The backward's grid ``(n_batch, n_chunks, n_col_blocks)``, rows per chunk and column
    block."""
    block = min(next_power_of_2(hidden), MAX_BLOCK)
    n_col_blocks = cdiv(hidden, block)
    n_chunks, rows_per_chunk = row_chunks(n_seq, n_batch * n_col_blocks)
    return (n_batch, n_chunks, n_col_blocks), rows_per_chunk, block


def dropout_seed(device: torch.device) -> torch.Tensor:
    """A one-element int64 Philox seed over the full 64-bit range, drawn on ``device`` from
    torch's default generator there (no host sync; reproducible under ``torch.manual_seed``)."""
    seed = torch.empty(1, dtype=torch.int64, device=device)
    return seed.random_(torch.iinfo(torch.int64).min, None)  # from int64 min, to None: all 2^64


class _GatedResidual(torch.autograd.Function):
    """Triton forward/backward of :func:`gated_residual` (see the module docstring)."""

    @staticmethod
    def forward(ctx, branch, bias, gate, residual, p, training):
        hidden, n_batch = branch.shape[-1], gate.shape[0]
        branch2 = branch.reshape(-1, hidden).contiguous()
        res2 = residual.reshape(-1, hidden).contiguous()
        gate_r = rows_of(gate)
        bias_c = bias.contiguous() if bias is not None else None
        dropout = bool(training) and p > 0.0
        seed = dropout_seed(branch.device) if dropout else None

        # Allocated in the caller's shape (not a view of a flat buffer): pipeline stages free
        # their outputs in place, which Megatron refuses for views (docs/numerics.md §3).
        out = torch.empty(residual.shape, dtype=residual.dtype, device=residual.device)
        block = min(next_power_of_2(hidden), MAX_BLOCK)
        grid = (branch2.shape[0], cdiv(hidden, block))
        _kernels()[0][grid](
            branch2,
            bias_c if bias_c is not None else branch2,  # never read without HAS_BIAS
            gate_r,
            res2,
            out,
            seed if dropout else gate_r,  # never read without DROPOUT
            n_batch,
            hidden,
            gate_r.stride(0),
            p,
            _keep_scale(p),
            HAS_BIAS=bias_c is not None,
            DROPOUT=dropout,
            BLOCK_H=block,
            num_warps=num_warps_for(block),
        )
        ctx.save_for_backward(branch2, bias_c, gate_r, seed)
        ctx.p, ctx.dropout = p, dropout
        ctx.shape, ctx.residual_dtype = branch.shape, residual.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        branch2, bias_c, gate_r, seed = ctx.saved_tensors
        d_residual = dout.to(ctx.residual_dtype) if ctx.needs_input_grad[3] else None
        if not any(ctx.needs_input_grad[:3]):
            return None, None, d_residual, None, None, None

        n_rows, hidden = branch2.shape
        n_batch = gate_r.shape[0]
        n_seq = n_rows // n_batch
        dout2 = dout.reshape(-1, hidden).contiguous()
        grid, rows_per_chunk, block = backward_grid(n_seq, n_batch, hidden)

        dbranch = torch.empty(ctx.shape, dtype=branch2.dtype, device=branch2.device)
        part_dgate = torch.empty(
            (grid[1], n_batch, hidden), dtype=torch.float32, device=dout.device
        )
        part_dbias = torch.empty_like(part_dgate) if bias_c is not None else part_dgate
        _kernels()[1][grid](
            dout2,
            branch2,
            bias_c if bias_c is not None else branch2,
            gate_r,
            seed if ctx.dropout else gate_r,
            dbranch,
            part_dgate,
            part_dbias,
            n_seq,
            n_batch,
            hidden,
            gate_r.stride(0),
            rows_per_chunk,
            ctx.p,
            _keep_scale(ctx.p),
            HAS_BIAS=bias_c is not None,
            DROPOUT=ctx.dropout,
            BLOCK_H=block,
            num_warps=num_warps_for(block),
        )
        dgate = part_dgate.sum(0).to(gate_r.dtype)
        dbias = part_dbias.sum((0, 1)).to(bias_c.dtype) if bias_c is not None else None
        return dbranch, dbias, dgate, d_residual, None, None


def gated_residual_reference(
    branch: torch.Tensor,
    bias: torch.Tensor | None,
    gate: torch.Tensor,
    residual: torch.Tensor,
    p: float = 0.0,
    training: bool = True,
) -> torch.Tensor:
    """Unfused torch version (what the model runs today), in the input dtypes:
    ``residual + gate * F.dropout(branch + bias, p, training)``; gate ``[b, H]`` broadcasts
    over the leading (sequence) dims exactly as ``unsqueeze(0)`` would."""
    v = branch + bias if bias is not None else branch
    return residual + gate * F.dropout(v, p, training)


def _check(branch, bias, gate, residual, p) -> None:
    if branch.dim() < 2:
        raise ValueError(f"branch must be [..., b, H], got shape {tuple(branch.shape)}")
    n_batch, hidden = branch.shape[-2], branch.shape[-1]
    if residual.shape != branch.shape:
        raise ValueError(
            f"residual must have branch's shape {tuple(branch.shape)}, "
            f"got {tuple(residual.shape)}"
        )
    if gate.shape != (n_batch, hidden):
        raise ValueError(
            f"gate must be [b, H]=[{n_batch}, {hidden}] for branch {tuple(branch.shape)}, "
            f"got {tuple(gate.shape)}"
        )
    if bias is not None and bias.shape != (hidden,):
        raise ValueError(f"bias must be [H]=[{hidden}] or None, got {tuple(bias.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")


def gated_residual(
    branch: torch.Tensor,
    bias: torch.Tensor | None,
    gate: torch.Tensor,
    residual: torch.Tensor,
    p: float = 0.0,
    training: bool = True,
    *,
    fused: bool = True,
) -> torch.Tensor:
    """``residual + gate * dropout_p(branch + bias)`` in fp32, returned in residual.dtype.

    branch, residual ``[..., b, H]``, bias ``[H]`` or None, gate ``[b, H]``. Dropout (inverted,
    keep probability 1 - p) applies only when ``training`` and ``p > 0``. Runs the fused Triton
    kernels when ``fused`` and the tensors allow it (float32 / bf16 / fp16 among them), else the
    torch reference.
    """
    with plain_dispatch():
        _check(branch, bias, gate, residual, p)
        fusable = fused and branch.numel() > 0 and kernel_dtypes_ok(branch, bias, gate, residual)
        if not (fusable and triton_usable(branch, bias, gate, residual)):
            return gated_residual_reference(branch, bias, gate, residual, p, training)
    return _GatedResidual.apply(branch, bias, gate, residual, float(p), bool(training))
