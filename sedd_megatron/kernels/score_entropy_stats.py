"""Triton shard statistics of score entropy, straight from the raw logits (no shard-sized buffer).

Per token row r of the raw output-layer logits l (this TP rank's vocabulary shard, V columns of
which the first ``num_valid`` are real and the rest padding), with the per-row shift c_r and the
shard-local current / clean columns x = x_t and x0, the log-score is

    s_y = l_y - c_r   (y != x),        s_x = 0,

and the shard statistics are (E = valid columns minus MASK for absorb, minus x for uniform)

    exp_sum = sum_{y in E} e^{s_y},
    at_x0   = s_{x0}  if the shard holds x0 and x0 != x,  else 0,
    log_sum = sum_{y valid, y != x} s_y   (uniform only).

x and x0 are shard-local and may lie outside [0, num_valid): then the shard does not hold them.
Backward, with upstream g_exp, g_x0, g_log per row:

    dL/dl_y = g_exp e^{s_y} [y in E] + g_log [y valid, y != x] + g_x0 [y = x0 != x]   (y != x),
    dL/dl_x = 0 (s_x is the constant 0),   dL/dl_y = 0 on padding (y >= num_valid),
    dL/dc_r = -sum_y dL/dl_y.

Both kernels run one program per row and loop over the vocabulary in ``BLOCK_V`` tiles: the
logits are loaded in their own dtype (fp32 / bf16 / fp16), everything is computed and summed in
fp32. The forward keeps nothing but the logits themselves (and the [R] per-row tensors) for
backward; backward recomputes e^{s_y} from them and writes dL/dl in the logits' dtype, in place
into the saved logits when allowed, together with the row sum that gives dL/dc. No host
synchronisation anywhere.

Same contract as ``_TorchScoreEntropyStats`` in
``sedd_megatron.models.sedd.vocab_parallel_score_entropy`` (the torch path, which also serves
float64 and CPU tensors); this module does not import Megatron.
"""

from __future__ import annotations

import torch

from .dispatch import HAVE_TRITON, KERNEL_DTYPES, jitted, triton_usable

if HAVE_TRITON:
    import triton.language as tl

# dtypes the kernels take; float64 (gradcheck) stays on the torch path.
TRITON_DTYPES = KERNEL_DTYPES  # float32, bf16, fp16
_MAX_BLOCK_V = 4096
_JITTED: dict[bool, tuple] = {}  # the jitted kernels per mode (dispatch.jitted)


def triton_supports(logits: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether ``score_entropy_stats_triton`` can run on these tensors (dtype and device)."""
    return logits.dtype in TRITON_DTYPES and triton_usable(logits, *others)


if HAVE_TRITON:

    def _score_entropy_fwd(
        logits_ptr,  # [R, V] rows, row stride ``stride_row``, unit column stride
        shift_ptr,  # [R] fp32 (read when HAS_SHIFT)
        xt_ptr,  # [R] int64 shard-local x_t
        x0_ptr,  # [R] int64 shard-local x0
        exp_sum_ptr,  # [R] fp32 out
        at_x0_ptr,  # [R] fp32 out
        log_sum_ptr,  # [R] fp32 out (written when UNIFORM)
        num_valid,
        mask_local,
        stride_row,
        HAS_SHIFT: tl.constexpr,
        UNIFORM: tl.constexpr,
        BLOCK_V: tl.constexpr,
    ):
        """One row: exp_sum = sum_E e^{s_y}, at_x0 = s_{x0}, log_sum = sum_{y != x} s_y."""
        row = tl.program_id(0)
        base = logits_ptr + row.to(tl.int64) * stride_row  # R * V may exceed 2**31
        xt = tl.load(xt_ptr + row)
        x0 = tl.load(x0_ptr + row)
        # -1 where the shard does not hold the column (never equals a column index)
        xt_col = tl.where((xt >= 0) & (xt < num_valid), xt, -1).to(tl.int32)
        x0_col = tl.where((x0 >= 0) & (x0 < num_valid) & (x0 != xt), x0, -1).to(tl.int32)
        if HAS_SHIFT:
            c = tl.load(shift_ptr + row).to(tl.float32)
        else:
            c = 0.0
        exp_acc = tl.zeros([BLOCK_V], dtype=tl.float32)
        x0_acc = tl.zeros([BLOCK_V], dtype=tl.float32)
        log_acc = tl.zeros([BLOCK_V], dtype=tl.float32)
        for v0 in range(0, num_valid, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            valid = cols < num_valid
            logit = tl.load(base + cols, mask=valid, other=0.0).to(tl.float32)
            is_x = cols == xt_col
            s = tl.where(is_x, 0.0, logit - c)
            if UNIFORM:
                in_e = valid & (cols != xt_col)
                log_acc += tl.where(valid, s, 0.0)  # s_x = 0 adds nothing
            else:
                in_e = valid & (cols != mask_local)
            exp_acc += tl.where(in_e, tl.exp(s), 0.0)
            x0_acc += tl.where(cols == x0_col, s, 0.0)
        tl.store(exp_sum_ptr + row, tl.sum(exp_acc, axis=0))
        tl.store(at_x0_ptr + row, tl.sum(x0_acc, axis=0))  # at most one non-zero term
        if UNIFORM:
            tl.store(log_sum_ptr + row, tl.sum(log_acc, axis=0))

    def _score_entropy_bwd(
        logits_ptr,  # [R, V] saved logits (read)
        grad_ptr,  # [R, V] dL/dl out, logits' dtype; may be logits_ptr itself (in place)
        shift_ptr,
        xt_ptr,
        x0_ptr,
        g_exp_ptr,  # [R] fp32 upstream gradients
        g_x0_ptr,
        g_log_ptr,  # read when UNIFORM
        g_shift_ptr,  # [R] fp32 out: dL/dc (written when WANT_SHIFT_GRAD)
        num_valid,
        vocab,
        mask_local,
        stride_row,
        HAS_SHIFT: tl.constexpr,
        UNIFORM: tl.constexpr,
        WANT_SHIFT_GRAD: tl.constexpr,
        BLOCK_V: tl.constexpr,
    ):
        """One row: dL/dl_y over all V columns (0 at x and on padding) and dL/dc = -sum_y."""
        row = tl.program_id(0)
        offset = row.to(tl.int64) * stride_row
        src = logits_ptr + offset
        dst = grad_ptr + offset
        xt = tl.load(xt_ptr + row)
        x0 = tl.load(x0_ptr + row)
        xt_col = tl.where((xt >= 0) & (xt < num_valid), xt, -1).to(tl.int32)
        x0_col = tl.where((x0 >= 0) & (x0 < num_valid) & (x0 != xt), x0, -1).to(tl.int32)
        if HAS_SHIFT:
            c = tl.load(shift_ptr + row).to(tl.float32)
        else:
            c = 0.0
        g_exp = tl.load(g_exp_ptr + row)
        g_x0 = tl.load(g_x0_ptr + row)
        if UNIFORM:
            g_log = tl.load(g_log_ptr + row)
        else:
            g_log = 0.0
        g_acc = tl.zeros([BLOCK_V], dtype=tl.float32)
        for v0 in range(0, vocab, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            valid = cols < num_valid
            logit = tl.load(src + cols, mask=valid, other=0.0).to(tl.float32)
            is_x = cols == xt_col
            s = tl.where(is_x, 0.0, logit - c)
            if UNIFORM:
                in_e = valid & (cols != xt_col)
            else:
                in_e = valid & (cols != mask_local)
            g = tl.where(in_e, g_exp * tl.exp(s), 0.0)
            if UNIFORM:
                g += tl.where(in_e, g_log, 0.0)  # uniform: E = {valid, y != x}
            g += tl.where(cols == x0_col, g_x0, 0.0)
            g = tl.where(is_x, 0.0, g)  # padding is already 0: outside E, never x0
            tl.store(dst + cols, g.to(grad_ptr.dtype.element_ty), mask=cols < vocab)
            if WANT_SHIFT_GRAD:
                g_acc += g
        if WANT_SHIFT_GRAD:
            tl.store(g_shift_ptr + row, -tl.sum(g_acc, axis=0))


def _kernels() -> tuple:
    """The (forward, backward) kernels, ``triton.jit``-decorated on first launch for the current
    mode (compiled, or interpreted under ``TRITON_INTERPRET=1``): see ``dispatch.jitted``."""
    return jitted(_JITTED, _score_entropy_fwd, _score_entropy_bwd)


def _block_v(vocab: int, block_v: int | None) -> int:
    if block_v is None:
        return min(_MAX_BLOCK_V, max(16, 1 << (max(vocab, 1) - 1).bit_length()))
    if block_v < 1 or block_v & (block_v - 1):
        raise ValueError(f"block_v must be a power of two, got {block_v}")
    return block_v


def _num_warps(block_v: int) -> int:
    """4 warps up to 1024 columns a tile, 8 above (16 fp32 per thread per accumulator at 4096)."""
    return 8 if block_v > 1024 else 4


class _TritonScoreEntropyStats(torch.autograd.Function):
    """The Triton twin of ``_TorchScoreEntropyStats``: see ``score_entropy_stats_triton``."""

    @staticmethod
    def forward(
        ctx,
        logits,
        shift,
        x_t_local,
        x0_local,
        num_valid: int,
        mask_local: int | None,
        inplace: bool,
        inplace_backward: bool,
        block_v: int | None,
    ):
        vocab = logits.shape[-1]
        saved = logits if logits.is_contiguous() else logits.contiguous()
        flat = saved.view(-1, vocab)
        rows = flat.shape[0]
        num_valid = max(0, min(int(num_valid), vocab))
        uniform = mask_local is None
        x_t_local = x_t_local.reshape(rows).to(torch.int64).contiguous()
        x0_local = x0_local.reshape(rows).to(torch.int64).contiguous()
        if shift is not None:
            shift = shift.reshape(rows).to(torch.float32).contiguous()
        exp_sum = torch.zeros(rows, dtype=torch.float32, device=logits.device)
        at_x0 = torch.zeros_like(exp_sum)
        log_sum = torch.zeros_like(exp_sum) if uniform else None
        block = _block_v(num_valid, block_v)
        if rows > 0 and num_valid > 0:
            fwd, _ = _kernels()
            fwd[(rows,)](
                flat,
                shift if shift is not None else exp_sum,  # dummy pointer, never read
                x_t_local,
                x0_local,
                exp_sum,
                at_x0,
                log_sum if uniform else exp_sum,  # dummy, never written
                num_valid,
                0 if uniform else int(mask_local),
                flat.stride(0),
                HAS_SHIFT=shift is not None,
                UNIFORM=uniform,
                BLOCK_V=block,
                num_warps=_num_warps(block),
            )
        ctx.save_for_backward(saved, shift, x_t_local, x0_local)
        # Writing the gradient over the saved logits is allowed when the caller gave them away
        # (inplace) or when they are a private copy made here.
        ctx.overwrite = inplace_backward and (inplace or saved is not logits)
        ctx.meta = (logits.shape, num_valid, mask_local, inplace_backward, block)
        ctx.consumed = False
        return (exp_sum, at_x0, log_sum) if uniform else (exp_sum, at_x0)

    @staticmethod
    def backward(ctx, grad_exp, grad_x0, grad_log=None):
        shape, num_valid, mask_local, inplace_backward, block = ctx.meta
        if ctx.consumed:
            raise RuntimeError(
                "fused score entropy: backward ran twice on a buffer it already turned into the "
                "gradient (retain_graph); pass inplace_backward=False to allow it"
            )
        saved, shift, x_t_local, x0_local = ctx.saved_tensors
        if inplace_backward:
            ctx.consumed = True  # the same once-only contract as the torch path
        vocab = shape[-1]
        flat = saved.view(-1, vocab)
        rows = flat.shape[0]
        uniform = mask_local is None
        if ctx.overwrite:
            # as an in-place torch op would: a node that saved these logits against the contract
            # now fails its version check instead of reading the gradient
            torch.autograd.graph.increment_version(saved)
            grad = flat
        else:
            grad = torch.empty_like(flat)
        want_shift = shift is not None and ctx.needs_input_grad[1]
        grad_shift = torch.empty(rows, dtype=torch.float32, device=flat.device)

        def upstream(g):  # may be an expanded (stride-0) or non-float32 tensor
            return g.reshape(rows).to(torch.float32).contiguous()

        grad_exp, grad_x0 = upstream(grad_exp), upstream(grad_x0)
        grad_log = upstream(grad_log) if uniform else grad_exp
        if rows > 0 and vocab > 0:
            _, bwd = _kernels()
            bwd[(rows,)](
                flat,
                grad,
                shift if shift is not None else grad_shift,  # dummy, never read
                x_t_local,
                x0_local,
                grad_exp,
                grad_x0,
                grad_log,
                grad_shift,
                num_valid,
                vocab,
                0 if uniform else int(mask_local),
                flat.stride(0),
                HAS_SHIFT=shift is not None,
                UNIFORM=uniform,
                WANT_SHIFT_GRAD=want_shift,
                BLOCK_V=block,
                num_warps=_num_warps(block),
            )
        elif want_shift:
            grad_shift.zero_()
        return (
            grad.view(shape),
            grad_shift if want_shift else None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def score_entropy_stats_triton(
    logits: torch.Tensor,
    shift: torch.Tensor | None,
    x_t_local: torch.Tensor,
    x0_local: torch.Tensor,
    num_valid: int,
    mask_local: int | None,
    *,
    inplace: bool = False,
    inplace_backward: bool = True,
    block_v: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """Shard statistics of score entropy per row of raw logits, with Triton (module docstring).

    For each row r (c = shift[r] or 0, x = x_t_local[r], s_y = l_y - c for y != x, s_x = 0):
    exp_sum = sum_{y in E} e^{s_y}, at_x0 = s_{x0} (0 unless 0 <= x0 < num_valid and x0 != x),
    log_sum = sum_{y < num_valid, y != x} s_y, with E = {y < num_valid} minus {mask_local}
    (absorb) or minus {x} (uniform). Differentiable in ``logits`` and ``shift``:
    dL/dl_y = g_exp e^{s_y} [y in E] + g_log [y valid, y != x] + g_x0 [y = x0 != x] (0 at x and
    on padding), dL/dc = -sum_y dL/dl_y.

    Args:
        logits: [..., V] raw logits, float32 / bf16 / fp16, rows (all leading dims flattened)
            in memory order; contiguous (otherwise copied once). Columns from ``num_valid`` on
            are padding: never read, gradient 0. On CUDA, or on CPU through Triton's
            interpreter (tests; see ``dispatch``).
        shift: [R] per-row shift c (any float dtype, computed in fp32), or None for 0.
        x_t_local, x0_local: [R] integer columns relative to the shard; outside
            [0, num_valid) the shard does not hold the token.
        num_valid: number of real vocabulary columns (clamped to [0, V]).
        mask_local: the MASK column relative to the shard (absorb; may be off-shard), or None
            for the uniform graph.
        inplace: the caller gives the logits away (nothing else needs them): with
            ``inplace_backward`` the gradient is written over them (forward never writes).
        inplace_backward: backward may run once only (a second raises RuntimeError, as on the
            torch path); with ``inplace`` it writes the gradient into the logits' storage.
        block_v: the vocabulary tile (a power of two); default min(4096, next_pow2(num_valid)).

    Returns:
        (exp_sum, at_x0) for absorb, (exp_sum, at_x0, log_sum) for uniform, each [R] float32.
    """
    if logits.dtype not in TRITON_DTYPES:
        raise TypeError(f"Triton score entropy takes float32/bf16/fp16 logits, not {logits.dtype}")
    if not triton_usable(logits, shift, x_t_local, x0_local):
        raise RuntimeError(
            "Triton score entropy needs triton and CUDA tensors (or CPU tensors under Triton's "
            "interpreter with SEDD_TRITON_ON_CPU=1)"
        )
    return _TritonScoreEntropyStats.apply(
        logits,
        shift,
        x_t_local,
        x0_local,
        num_valid,
        mask_local,
        inplace,
        inplace_backward,
        block_v,
    )
