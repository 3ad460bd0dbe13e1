"""Fused LayerNorm or RMSNorm + adaLN modulation (forward and backward Triton kernels).

For x of shape ``[..., b, H]`` flattened to rows ``[R, H]`` (row r belongs to batch r % b),
weight ``[H]`` and the per-batch modulation shift, scale ``[b, H]``, all math in fp32:

    LayerNorm:  mean = sum(x) / H,   rstd = 1 / sqrt(sum((x - mean)^2) / H + eps)
                xhat = (x - mean) * rstd
    RMSNorm:    rstd = 1 / sqrt(sum(x^2) / H + eps),   xhat = x * rstd
    y    = xhat * w * (1 + scale[b]) + shift[b]          (stored in x.dtype)

Backward, with g = dy * w * (1 + scale[b]):

    dx        = rstd * (g - mean(g) - xhat * mean(g * xhat))      (LayerNorm)
    dx        = rstd * (g - xhat * mean(g * xhat))                (RMSNorm)
    dshift[b] = sum over batch b's rows of dy
    dscale[b] = w * sum over batch b's rows of dy * xhat
    dweight   = sum over all rows of dy * xhat * (1 + scale[b])

One kernel pair serves both norms (the ``RMS`` constexpr). The forward runs one program per row
and saves rstd (fp32 [R]) next to x, and for LayerNorm the mean too. The backward runs a (batch,
chunk of sequence rows) grid: each program writes dx for its rows and fp32 partial sums of dy and
dy * xhat to ``[n_chunks, b, H]`` buffers that torch then sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import (
    HAVE_TRITON,
    jitted,
    kernel_dtypes_ok,
    next_power_of_2,
    num_warps_for,
    plain_dispatch,
    row_chunks,
    rows_of,
    triton_usable,
)

# Widest row the fused kernels take (one row lives in one program's registers); wider rows
# run the reference.
MAX_FUSED_HIDDEN = 8192

if HAVE_TRITON:
    import triton.language as tl

    # Kernels are plain functions here, decorated with triton.jit on first launch (``_kernels``).

    def _ln_modulate_fwd(
        x_ptr,
        w_ptr,
        shift_ptr,
        scale_ptr,
        y_ptr,
        mean_ptr,
        rstd_ptr,
        n_batch,
        H,
        stride_shift,
        stride_scale,
        eps,
        BLOCK_H: tl.constexpr,
        RMS: tl.constexpr,
    ):
        """One row: y = xhat * w * (1 + scale[b]) + shift[b], xhat = (x - mean) * rstd (RMS:
        x * rstd, no mean)."""
        row = tl.program_id(0)
        b = row % n_batch
        cols = tl.arange(0, BLOCK_H)
        mask = cols < H
        offs = row.to(tl.int64) * H + cols

        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if RMS:
            xc = x  # masked columns loaded as 0
        else:
            mean = tl.sum(x, axis=0) / H
            xc = tl.where(mask, x - mean, 0.0)
        var = tl.sum(xc * xc, axis=0) / H  # RMS: the mean square
        rstd = tl.rsqrt(var + eps)

        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + b * stride_shift + cols, mask=mask, other=0.0)
        scale = tl.load(scale_ptr + b * stride_scale + cols, mask=mask, other=0.0)
        y = (xc * rstd * w) * (1.0 + scale.to(tl.float32)) + shift.to(tl.float32)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
        if not RMS:
            tl.store(mean_ptr + row, mean)
        tl.store(rstd_ptr + row, rstd)

    def _ln_modulate_bwd(
        dy_ptr,
        x_ptr,
        w_ptr,
        scale_ptr,
        mean_ptr,
        rstd_ptr,
        dx_ptr,
        part_dy_ptr,
        part_dy_xhat_ptr,
        n_seq,
        n_batch,
        H,
        stride_scale,
        rows_per_chunk,
        BLOCK_H: tl.constexpr,
        RMS: tl.constexpr,
    ):
        """Rows s*b + batch for s in this chunk: dx, plus partial sums of dy and dy * xhat."""
        batch = tl.program_id(0)
        chunk = tl.program_id(1)
        cols = tl.arange(0, BLOCK_H)
        mask = cols < H

        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + batch * stride_scale + cols, mask=mask, other=0.0)
        w_mod = w * (1.0 + scale.to(tl.float32))
        acc_dy = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc_dy_xhat = tl.zeros([BLOCK_H], dtype=tl.float32)

        for i in range(0, rows_per_chunk):
            s = chunk * rows_per_chunk + i
            in_seq = s < n_seq
            row = s.to(tl.int64) * n_batch + batch
            row_mask = mask & in_seq
            offs = row * H + cols
            dy = tl.load(dy_ptr + offs, mask=row_mask, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + offs, mask=row_mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row, mask=in_seq, other=0.0)
            if RMS:
                xhat = tl.where(row_mask, x * rstd, 0.0)
            else:
                mean = tl.load(mean_ptr + row, mask=in_seq, other=0.0)
                xhat = tl.where(row_mask, (x - mean) * rstd, 0.0)

            g = dy * w_mod
            mean_g_xhat = tl.sum(g * xhat, axis=0) / H
            if RMS:
                dx = rstd * (g - xhat * mean_g_xhat)
            else:
                mean_g = tl.sum(g, axis=0) / H
                dx = rstd * (g - mean_g - xhat * mean_g_xhat)
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=row_mask)

            acc_dy += dy
            acc_dy_xhat += dy * xhat

        part = (chunk * n_batch + batch).to(tl.int64) * H + cols
        tl.store(part_dy_ptr + part, acc_dy, mask=mask)
        tl.store(part_dy_xhat_ptr + part, acc_dy_xhat, mask=mask)


_JITTED: dict = {}


def _kernels():
    """(forward, backward) kernels, jitted for the current mode."""
    return jitted(_JITTED, _ln_modulate_fwd, _ln_modulate_bwd)


def backward_grid(n_seq: int, n_batch: int) -> tuple[tuple[int, int], int]:
    """The backward's grid ``(n_batch, n_chunks)`` and its rows per chunk (``row_chunks``)."""
    n_chunks, rows_per_chunk = row_chunks(n_seq, n_batch)
    return (n_batch, n_chunks), rows_per_chunk


class _LayerNormModulate(torch.autograd.Function):
    """Triton forward/backward of :func:`layer_norm_modulate` (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, shift, scale, eps, rms):
        hidden, n_batch = x.shape[-1], shift.shape[0]
        x2 = x.reshape(-1, hidden).contiguous()
        w = weight.contiguous()
        shift_r, scale_r = rows_of(shift), rows_of(scale)
        n_rows = x2.shape[0]

        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # not a view: see residual.py
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        # RMSNorm has no mean: the kernels neither write nor read mean_ptr (given rstd's)
        mean = rstd if rms else torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block = next_power_of_2(hidden)
        _kernels()[0][(n_rows,)](
            x2,
            w,
            shift_r,
            scale_r,
            y,
            mean,
            rstd,
            n_batch,
            hidden,
            shift_r.stride(0),
            scale_r.stride(0),
            eps,
            BLOCK_H=block,
            RMS=rms,
            num_warps=num_warps_for(block),
        )
        ctx.save_for_backward(x2, w, scale_r, mean, rstd)
        ctx.rms = rms
        ctx.x_shape = x.shape
        ctx.shift_dtype = shift.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, w, scale_r, mean, rstd = ctx.saved_tensors
        n_rows, hidden = x2.shape
        n_batch = scale_r.shape[0]
        n_seq = n_rows // n_batch
        dy2 = dy.reshape(-1, hidden).contiguous()

        grid, rows_per_chunk = backward_grid(n_seq, n_batch)
        part_dy = torch.empty((grid[1], n_batch, hidden), dtype=torch.float32, device=dy.device)
        part_dy_xhat = torch.empty_like(part_dy)
        dx = torch.empty(ctx.x_shape, dtype=x2.dtype, device=x2.device)
        block = next_power_of_2(hidden)
        _kernels()[1][grid](
            dy2,
            x2,
            w,
            scale_r,
            mean,
            rstd,
            dx,
            part_dy,
            part_dy_xhat,
            n_seq,
            n_batch,
            hidden,
            scale_r.stride(0),
            rows_per_chunk,
            BLOCK_H=block,
            RMS=ctx.rms,
            num_warps=num_warps_for(block, values_per_warp=256),
        )
        dy_xhat = part_dy_xhat.sum(0)  # [b, H] fp32
        dshift = part_dy.sum(0).to(ctx.shift_dtype)
        dscale = (dy_xhat * w.float()).to(scale_r.dtype)
        dweight = (dy_xhat * (1.0 + scale_r.float())).sum(0).to(w.dtype)
        return dx, dweight, dshift, dscale, None, None


def layer_norm_modulate_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-5,
    rms: bool = False,
) -> torch.Tensor:
    """Unfused torch version: fp32 LayerNorm (``rms``: RMSNorm) times weight, then
    ``* (1 + scale) + shift``.

    shift and scale ``[b, H]`` broadcast over the leading (sequence) dims of x ``[..., b, H]``
    exactly as ``unsqueeze(0)`` would.
    """
    xf = x.float()
    if rms:
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    else:
        normed = F.layer_norm(xf, (x.shape[-1],), eps=eps)
    h = normed * weight.float()
    return (h * (1 + scale.float()) + shift.float()).to(x.dtype)


def _check(x, weight, shift, scale) -> None:
    if x.dim() < 2:
        raise ValueError(f"x must be [..., b, H], got shape {tuple(x.shape)}")
    n_batch, hidden = x.shape[-2], x.shape[-1]
    if weight.shape != (hidden,):
        raise ValueError(f"weight must be [H]=[{hidden}], got {tuple(weight.shape)}")
    for name, t in (("shift", shift), ("scale", scale)):
        if t.shape != (n_batch, hidden):
            raise ValueError(
                f"{name} must be [b, H]=[{n_batch}, {hidden}] for x {tuple(x.shape)}, "
                f"got {tuple(t.shape)}"
            )
    for name, t in (("x", x), ("weight", weight), ("shift", shift), ("scale", scale)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def layer_norm_modulate(
    x: torch.Tensor,
    weight: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-5,
    *,
    fused: bool = True,
    rms: bool = False,
) -> torch.Tensor:
    """``LayerNorm(x) * weight * (1 + scale) + shift`` in fp32, returned in x.dtype; ``rms``
    normalises with RMSNorm (no mean subtracted) instead.

    x ``[..., b, H]``, weight ``[H]``, shift and scale ``[b, H]`` (broadcast over the leading
    dims). Runs the fused Triton kernels when ``fused`` and the tensors allow it (see
    :func:`~sedd_megatron.kernels.dispatch.triton_usable`; rows up to ``MAX_FUSED_HIDDEN``;
    float32 / bf16 / fp16), else the torch reference.
    """
    with plain_dispatch():
        _check(x, weight, shift, scale)
        fusable = fused and x.numel() > 0 and x.shape[-1] <= MAX_FUSED_HIDDEN
        fusable = fusable and kernel_dtypes_ok(x, weight, shift, scale)
        if not (fusable and triton_usable(x, weight, shift, scale)):
            return layer_norm_modulate_reference(x, weight, shift, scale, eps, rms)
    return _LayerNormModulate.apply(x, weight, shift, scale, float(eps), bool(rms))
