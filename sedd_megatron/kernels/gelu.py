"""Fused bias + tanh-GELU (forward and backward Triton kernels).

For x ``[..., F]`` flattened to rows ``[R, F]`` and bias ``[F]`` (optional), in fp32:

    u  = x + bias
    y  = gelu(u) = 0.5 u (1 + tanh(z)),   z = k (u + c u^3),  k = sqrt(2 / pi),  c = 0.044715
    y' = 0.5 (1 + tanh(z)) + 0.5 u (1 - tanh(z)^2) k (1 + 3 c u^2)

so dx = dy * y'(u) and dbias = sum over rows of dx. tanh is computed from t = exp(-2|z|), which
lies in (0, 1] and cannot overflow: tanh(z) = sign(z) (1 - t) / (1 + t) and
1 - tanh(z)^2 = 4 t / (1 + t)^2. The backward recomputes u from the saved x and bias; it runs
a (row chunk, column block) grid writing fp32 partial sums of dx that torch then sums.
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
    triton_usable,
)

# Columns per program of the element-wise grids.
MAX_BLOCK = 1024

if HAVE_TRITON:
    import triton.language as tl

    # Kernels are plain functions here, decorated with triton.jit on first launch (``_kernels``).
    # Both form z = sqrt(2/pi) (u + 0.044715 u^3), t = exp(-2|z|), tanh(z) = sign(z) (1-t)/(1+t).

    def _bias_gelu_fwd(
        x_ptr,
        bias_ptr,
        y_ptr,
        F_,
        HAS_BIAS: tl.constexpr,
        BLOCK_F: tl.constexpr,
    ):
        """One row, one column block: y = gelu_tanh(x + bias)."""
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
        mask = cols < F_
        offs = row.to(tl.int64) * F_ + cols
        u = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            u += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        z = 0.7978845608028654 * (u + 0.044715 * u * u * u)
        t = tl.exp(-2.0 * tl.abs(z))
        th = (1.0 - t) / (1.0 + t)
        th = tl.where(z < 0.0, -th, th)
        y = 0.5 * u * (1.0 + th)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    def _bias_gelu_bwd(
        dy_ptr,
        x_ptr,
        bias_ptr,
        dx_ptr,
        part_dbias_ptr,
        n_rows,
        F_,
        rows_per_chunk,
        HAS_BIAS: tl.constexpr,
        BLOCK_F: tl.constexpr,
    ):
        """Rows of this chunk, one column block: dx = dy * gelu'(u), partial sums of dx."""
        chunk = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
        mask = cols < F_
        bias = tl.zeros([BLOCK_F], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        acc = tl.zeros([BLOCK_F], dtype=tl.float32)

        for i in range(0, rows_per_chunk):
            row = chunk * rows_per_chunk + i
            row_mask = mask & (row < n_rows)
            offs = row.to(tl.int64) * F_ + cols
            dy = tl.load(dy_ptr + offs, mask=row_mask, other=0.0).to(tl.float32)
            u = tl.load(x_ptr + offs, mask=row_mask, other=0.0).to(tl.float32) + bias
            z = 0.7978845608028654 * (u + 0.044715 * u * u * u)
            t = tl.exp(-2.0 * tl.abs(z))
            inv = 1.0 / (1.0 + t)
            th = (1.0 - t) * inv
            th = tl.where(z < 0.0, -th, th)
            sech2 = 4.0 * t * inv * inv  # 1 - tanh(z)^2
            dz_du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * u * u)
            dx = dy * (0.5 * (1.0 + th) + 0.5 * u * sech2 * dz_du)
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=row_mask)
            acc += dx

        if HAS_BIAS:
            part = chunk.to(tl.int64) * F_ + cols
            tl.store(part_dbias_ptr + part, acc, mask=mask)


_JITTED: dict = {}


def _kernels():
    """(forward, backward) kernels, jitted for the current mode."""
    return jitted(_JITTED, _bias_gelu_fwd, _bias_gelu_bwd)


def backward_grid(n_rows: int, features: int) -> tuple[tuple[int, int], int, int]:
    """The backward's grid ``(n_chunks, n_col_blocks)``, rows per chunk and column block."""
    block = min(next_power_of_2(features), MAX_BLOCK)
    n_col_blocks = cdiv(features, block)
    n_chunks, rows_per_chunk = row_chunks(n_rows, n_col_blocks)
    return (n_chunks, n_col_blocks), rows_per_chunk, block


class _BiasGelu(torch.autograd.Function):
    """Triton forward/backward of :func:`bias_gelu` (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, bias):
        features = x.shape[-1]
        x2 = x.reshape(-1, features).contiguous()
        bias_c = bias.contiguous() if bias is not None else None
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # not a view: see residual.py
        block = min(next_power_of_2(features), MAX_BLOCK)
        _kernels()[0][(x2.shape[0], cdiv(features, block))](
            x2,
            bias_c if bias_c is not None else x2,  # never read without HAS_BIAS
            y,
            features,
            HAS_BIAS=bias_c is not None,
            BLOCK_F=block,
            num_warps=num_warps_for(block),
        )
        ctx.save_for_backward(x2, bias_c)
        ctx.x_shape = x.shape
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, bias_c = ctx.saved_tensors
        n_rows, features = x2.shape
        dy2 = dy.reshape(-1, features).contiguous()
        grid, rows_per_chunk, block = backward_grid(n_rows, features)

        dx = torch.empty(ctx.x_shape, dtype=x2.dtype, device=x2.device)
        part_dbias = (
            torch.empty((grid[0], features), dtype=torch.float32, device=dy.device)
            if bias_c is not None
            else dx
        )
        _kernels()[1][grid](
            dy2,
            x2,
            bias_c if bias_c is not None else x2,
            dx,
            part_dbias,
            n_rows,
            features,
            rows_per_chunk,
            HAS_BIAS=bias_c is not None,
            BLOCK_F=block,
            num_warps=num_warps_for(block),
        )
        dbias = part_dbias.sum(0).to(bias_c.dtype) if bias_c is not None else None
        return dx, dbias


def bias_gelu_reference(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Unfused torch version: ``F.gelu(x + bias, approximate="tanh")``."""
    return F.gelu(x + bias if bias is not None else x, approximate="tanh")


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, *, fused: bool = True) -> torch.Tensor:
    """``gelu_tanh(x + bias)`` in fp32, returned in x.dtype; x ``[..., F]``, bias ``[F]`` or None.

    Runs the fused Triton kernels when ``fused`` and the tensors allow it (float32 / bf16 / fp16
    among them), else the reference.
    """
    with plain_dispatch():
        if x.dim() < 1:
            raise ValueError("x must have at least one dimension [..., F]")
        if bias is not None and bias.shape != (x.shape[-1],):
            raise ValueError(f"bias must be [F]=[{x.shape[-1]}] or None, got {tuple(bias.shape)}")
        fusable = fused and x.numel() > 0 and kernel_dtypes_ok(x, bias)
        if not (fusable and triton_usable(x, bias)):
            return bias_gelu_reference(x, bias)
    return _BiasGelu.apply(x, bias)
