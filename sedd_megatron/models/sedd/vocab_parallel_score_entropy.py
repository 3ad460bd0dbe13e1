"""Vocab-parallel score entropy: the SEDD loss from TP-sharded logits, no vocabulary gather.

The graph's score entropy is a function of a few per-token sums over the vocabulary
(``Graph.score_entropy_stats``). Each TP rank computes them on its shard, one all-reduce sums
them, and every rank combines the totals (``Graph.score_entropy_from_stats``). The all-reduce is
Megatron's ``reduce_from_tensor_model_parallel_region``: its backward is the identity, which is
the gradient of the redundant per-rank combination with respect to each rank's partial sums.

The per-shard sums come from ``_TorchScoreEntropyStats``, one ``torch.autograd.Function`` that
goes from the raw output-layer logits l (any float dtype, Megatron's [s, b, V_local] layout) to
the statistics of the log-score

    s_y = l_y - c_b  (y != x_t),    s_{x_t} = 0,

where c_b is the per-sequence absorb shift log(e^sigma - 1) + log(V' - 1) (``scale_by_sigma``;
0 otherwise). With E = {valid columns} minus {MASK} (absorb) or minus {x_t} (uniform), and
e_y = e^{s_y}:

    exp_sum = sum_{y in E} e_y,   at_x0 = s_{x0} (0 off-shard),
    log_sum = sum_{y valid, y != x_t} s_y   (uniform only).

Only the e buffer (one float32 tensor the size of the shard; float64 for float64 logits) is kept
for backward, which turns it in place into the gradient with respect to the logits:

    dL/dl_y = g_exp e_y [y in E] + g_log [y valid, y != x_t] + g_x0 [y = x0 != x_t]   (y != x_t)
    dL/dl_{x_t} = 0   (s_{x_t} is the constant 0),   dL/dl_y = 0 on padded columns,
    dL/dc_b = -sum_{s, y} dL/dl_y   (only computed when the shift requires grad).

On CUDA (and, in tests, on CPU through Triton's interpreter) float32 / bf16 / fp16 logits go to
the Triton kernels of ``sedd_megatron.kernels.score_entropy_stats`` instead: same statistics and
gradients, but one pass over the shard forward and one backward, no shard-sized buffer (the
logits themselves are saved, e^{s_y} is recomputed, and the gradient is written in the logits'
dtype, over the logits when ``inplace``). ``_TorchScoreEntropyStats`` remains the CPU / float64
path.
"""

import torch
from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

from sedd_megatron.diffusion import get_graph
from sedd_megatron.diffusion.graph import Graph, ScoreEntropyStats
from sedd_megatron.kernels.score_entropy_stats import score_entropy_stats_triton, triton_supports

# CPU: rows per chunk are chosen so that a chunk of the float32 buffer is about this size, which
# keeps a chunk in cache across the chunk's passes (shift, exp, sums). CUDA: one chunk.
_CPU_CHUNK_BYTES = 1 << 21


def _memory_order(logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A contiguous [A, B, V] view of ``logits`` [s, b, V] and whether A is b (i.e. transposed).

    Megatron's [s, b, V] activations are used as they are; a transposed view of [b, s, V] memory
    (a [b, s, V] log-score passed as ``.transpose(0, 1)``) as well; anything else is copied.
    """
    if logits.is_contiguous():
        return logits, False
    if logits.transpose(0, 1).is_contiguous():
        return logits.transpose(0, 1), True
    return logits.contiguous(), False


def _set_at(buf: torch.Tensor, index: torch.Tensor, holds: torch.Tensor, value: float) -> None:
    """buf[r, index[r]] = value on the rows r where ``holds``; other rows unchanged (no sync)."""
    index = index[:, None]
    current = buf.gather(1, index)
    buf.scatter_(1, index, torch.where(holds[:, None], value, current))


class _TorchScoreEntropyStats(torch.autograd.Function):
    """Shard statistics of score entropy from raw logits in torch, one autograd Function: the
    CPU / float64 path and the Triton kernels' twin (see the module docstring).

    Inputs (rows = tokens in the memory order of the logits, flattened by the wrapper):
        logits: [A, B, V] contiguous (float32, bf16 or fp16); shift: [R] float32 or None;
        x_t_local, x0_local: [R] int64 column indices relative to the shard (may be outside
            [0, num_valid): then the shard does not hold that token); num_valid: number of real
            vocabulary columns in the shard; mask_local: the MASK column (absorb) or None
            (uniform); inplace: reuse the float32 logits as the buffer; inplace_backward: turn
            the saved buffer into the gradient (backward then runs once only); chunk_rows.
    Outputs: exp_sum, at_x0 (and log_sum for uniform), each [R], float32 (float64 logits:
    float64).
    """

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
        chunk_rows: int,
    ):
        vocab = logits.shape[-1]
        rows = x_t_local.numel()
        flat = logits.view(rows, vocab)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        if inplace and logits.dtype == dtype:
            buf = flat
        else:  # bf16 / fp16 are upcast on the fly by the first pass, chunk by chunk
            buf = torch.empty((rows, vocab), dtype=dtype, device=logits.device)
        if shift is not None:
            shift = shift.to(dtype)
        uniform = mask_local is None
        holds_x = (x_t_local >= 0) & (x_t_local < num_valid)
        index_x = x_t_local.clamp(0, max(num_valid - 1, 0))
        holds_x0 = (x0_local >= 0) & (x0_local < num_valid) & (x0_local != x_t_local)
        index_x0 = x0_local.clamp(0, max(num_valid - 1, 0))
        exp_sum = buf.new_zeros(rows)
        at_x0 = buf.new_zeros(rows)
        log_sum = buf.new_zeros(rows) if uniform else None
        if num_valid > 0:
            for r0 in range(0, rows, chunk_rows):
                r1 = min(rows, r0 + chunk_rows)
                chunk = buf[r0:r1, :num_valid]
                source = flat[r0:r1, :num_valid]
                if shift is not None:
                    torch.sub(source, shift[r0:r1, None], out=chunk)
                elif chunk.data_ptr() != source.data_ptr():
                    chunk.copy_(source)
                _set_at(chunk, index_x[r0:r1], holds_x[r0:r1], 0.0)  # s_{x_t} = 0
                picked = chunk.gather(1, index_x0[r0:r1, None]).squeeze(1)
                at_x0[r0:r1] = torch.where(holds_x0[r0:r1], picked, 0.0)
                if uniform:
                    torch.sum(chunk, dim=1, out=log_sum[r0:r1])  # s_{x_t} = 0 adds nothing
                chunk.exp_()
                if uniform:
                    _set_at(chunk, index_x[r0:r1], holds_x[r0:r1], 0.0)  # x_t not in E
                elif 0 <= mask_local < num_valid:
                    chunk[:, mask_local] = 0.0  # MASK not in E
                torch.sum(chunk, dim=1, out=exp_sum[r0:r1])
        # In place, save the input itself: a view made here (no grad mode) may not be saved.
        saved = logits if buf.data_ptr() == flat.data_ptr() else buf
        ctx.save_for_backward(saved, holds_x, index_x, holds_x0, index_x0)
        ctx.has_shift = shift is not None
        ctx.meta = (logits.shape, logits.dtype, num_valid, uniform, inplace_backward, chunk_rows)
        ctx.consumed = False
        return (exp_sum, at_x0, log_sum) if uniform else (exp_sum, at_x0)

    @staticmethod
    def backward(ctx, grad_exp, grad_x0, grad_log=None):
        shape, dtype, num_valid, uniform, inplace_backward, chunk_rows = ctx.meta
        if ctx.consumed:
            raise RuntimeError(
                "fused score entropy: backward ran twice on a buffer it already turned into the "
                "gradient (retain_graph); pass inplace_backward=False to allow it"
            )
        buf, holds_x, index_x, holds_x0, index_x0 = ctx.saved_tensors
        buf = buf.view(-1, shape[-1])
        if inplace_backward:
            ctx.consumed = True
        else:
            buf = buf.clone()
        rows, vocab = buf.shape
        want_shift = ctx.has_shift and ctx.needs_input_grad[1]
        grad_shift = buf.new_zeros(rows) if want_shift else None
        add_x0 = torch.where(holds_x0, grad_x0, 0.0)[:, None]
        for r0 in range(0, rows if num_valid > 0 else 0, chunk_rows):
            r1 = min(rows, r0 + chunk_rows)
            chunk = buf[r0:r1, :num_valid]
            chunk.mul_(grad_exp[r0:r1, None])  # g_exp e_y, 0 off E
            if uniform:
                chunk.add_(grad_log[r0:r1, None])
            _set_at(chunk, index_x[r0:r1], holds_x[r0:r1], 0.0)  # l_{x_t} does not reach SE
            chunk.scatter_add_(1, index_x0[r0:r1, None], add_x0[r0:r1])
            if want_shift:
                torch.sum(chunk, dim=1, out=grad_shift[r0:r1]).neg_()
        buf[:, num_valid:] = 0.0  # padding
        grad = buf.view(shape)
        if grad.dtype != dtype:
            grad = grad.to(dtype)
        return grad, grad_shift, None, None, None, None, None, None, None


def fused_score_entropy_stats(
    graph: Graph,
    logits: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    *,
    shift: torch.Tensor | None = None,
    vocab_offset: int = 0,
    num_valid: int | None = None,
    inplace: bool = False,
    inplace_backward: bool = True,
    chunk_bytes: int | None = None,
    use_triton: bool | None = None,
) -> ScoreEntropyStats:
    """This shard's score-entropy statistics [b, s] straight from raw logits, fused.

    Equals ``graph.score_entropy_stats(s, x_t, x0, vocab_offset, num_valid)`` on the log-score
    s = logits - shift with s = 0 at x_t (what ``SEDDModel._postprocess`` makes), forward and
    backward (the gradient at column x_t is 0: the log-score there is a constant), in about
    three passes over the shard forward and two backward, with one float32 shard-sized buffer
    (the exps, saved for backward and turned into the gradient in place there) on the torch
    path; one pass each way and no buffer on the Triton path (``use_triton``). No
    communication: all-reduce the result over the TP group to get the full statistics.

    Args:
        graph: ``Absorbing`` or ``Uniform`` (the kind and the MASK id).
        logits: [s, b, V_local] raw output-layer logits of vocabulary columns
            [vocab_offset, vocab_offset + V_local) (Megatron's layout; a ``.transpose(0, 1)`` view
            of [b, s, V_local] memory works too, without a copy). float32, or bf16/fp16: the
            torch path upcasts those to its float32 buffer during its first pass (no extra copy;
            the gradient is cast back to the logits' dtype), the Triton path reads them as they
            are and computes in float32. Columns from ``num_valid`` on are padding: never read,
            gradient 0.
        x_t, x0: [b, s] int64 current and clean tokens (global ids).
        shift: [b] per-sequence shift subtracted from the logits (the absorb sigma scaling), or
            None for 0. Differentiable (it is data in SEDD, so normally no gradient is computed).
        inplace: the logits are not needed afterwards (e.g. a fresh output-layer activation
            nobody saved). Torch path, float32 logits only: the buffer is written over them
            (saves a shard). Triton path, any of its dtypes (so bf16 logits need no float32
            upcast): they are saved as they are and, with ``inplace_backward``, the gradient is
            written over them in their dtype.
        inplace_backward: backward overwrites the saved buffer (torch) / the given-away logits
            (Triton with ``inplace``) with the gradient, so it can run once only on either path
            (no ``retain_graph`` re-use; False copies / allocates instead, e.g. for gradcheck).
        chunk_bytes: torch path: size of the row chunks the passes run over (cache blocking);
            default about 2 MiB on CPU, a single chunk on CUDA. Ignored by the Triton path.
        use_triton: None (default): the Triton kernels when the logits are float32 / bf16 /
            fp16 and Triton can run on their device (CUDA, or CPU through Triton's interpreter in
            tests; see ``sedd_megatron.kernels.dispatch.triton_usable``), else the torch path.
            False: always the torch path. True: the Triton kernels, raising RuntimeError if they
            cannot run on these tensors.
    """
    s, b, vocab = logits.shape
    if x_t.shape != (b, s) or x0.shape != (b, s):
        raise ValueError(f"x_t {tuple(x_t.shape)} / x0 {tuple(x0.shape)} must be [b, s]={b, s}")
    num_valid = vocab if num_valid is None else max(0, min(int(num_valid), vocab))
    mem, by_batch = _memory_order(logits)  # [b, s, V] memory if by_batch else [s, b, V]

    def rows(t: torch.Tensor) -> torch.Tensor:  # [b, s] -> [R] in the memory order
        return t.reshape(-1) if by_batch else t.t().reshape(-1)

    if shift is not None:
        shift = (shift[:, None] if by_batch else shift[None, :]).expand(mem.shape[:2])
        shift = shift.reshape(-1)
    mask_local = graph.excluded_column(vocab_offset)  # MASK (absorb), None (uniform)
    triton_ok = triton_supports(logits, x_t, x0, shift)
    if use_triton and not triton_ok:
        raise RuntimeError(
            f"use_triton=True but the Triton score entropy cannot run on {logits.dtype} logits on "
            f"{logits.device} (needs float32/bf16/fp16, triton, and CUDA tensors, or CPU tensors "
            "under Triton's interpreter with SEDD_TRITON_ON_CPU=1)"
        )
    inputs = (mem, shift, rows(x_t) - vocab_offset, rows(x0) - vocab_offset, num_valid, mask_local)
    if triton_ok and use_triton is not False:
        out = score_entropy_stats_triton(
            *inputs, inplace=inplace, inplace_backward=inplace_backward
        )
    else:
        if chunk_bytes is None:
            chunk_bytes = _CPU_CHUNK_BYTES if logits.device.type == "cpu" else 1 << 62
        chunk_rows = max(1, chunk_bytes // (4 * max(vocab, 1)))
        out = _TorchScoreEntropyStats.apply(*inputs, inplace, inplace_backward, chunk_rows)

    def back(t: torch.Tensor) -> torch.Tensor:  # [R] -> [b, s], contiguous (for all-reduce)
        return t.view(b, s) if by_batch else t.view(s, b).t().contiguous()

    return ScoreEntropyStats(*(back(t) for t in out))


def vocab_parallel_score_entropy_from_logits(
    graph_name: str,
    num_tokens: int,
    logits_shard: torch.Tensor,
    sigma: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    vocab_offset: int,
    num_valid: int,
    tp_group,
    *,
    shift: torch.Tensor | None = None,
    inplace: bool = False,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """Per-token score entropy [b, s] from this rank's raw logits [s, b, V_local].

    ``fused_score_entropy_stats`` (log-score = logits - shift, 0 at x_t), one all-reduce of the
    [b, s] statistics over ``tp_group``, then ``graph.score_entropy_from_stats``.

    Args:
        logits_shard: [s, b, n] logits of vocabulary rows [vocab_offset, vocab_offset + n);
            columns from ``num_valid`` on are vocabulary padding (ignored; any value).
        sigma: total noise [b].
        shift: [b] subtracted from the logits (absorb ``scale_by_sigma``), or None.
        inplace: the logits are given away: the torch path overwrites (float32) logits with its
            buffer, the Triton path (any float32 / bf16 / fp16 logits) writes the gradient over
            them in backward.
        use_triton: None picks the Triton kernels when they can run (CUDA, float32 / bf16 /
            fp16 logits), False forces the torch path, True requires Triton (see
            ``fused_score_entropy_stats``).
    """
    graph = get_graph(graph_name, num_tokens)
    stats = fused_score_entropy_stats(
        graph,
        logits_shard,
        x_t,
        x0,
        shift=shift,
        vocab_offset=vocab_offset,
        num_valid=num_valid,
        inplace=inplace,
        use_triton=use_triton,
    )
    if tp_group.size() > 1:
        stats = stats.map(lambda s: reduce_from_tensor_model_parallel_region(s, group=tp_group))
    return graph.score_entropy_from_stats(stats, sigma[:, None], x_t, x0)


def vocab_parallel_score_entropy(
    graph_name: str,
    num_tokens: int,
    log_score_shard: torch.Tensor,
    sigma: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    vocab_offset: int,
    num_valid: int,
    tp_group,
) -> torch.Tensor:
    """Per-token score entropy [b, s] from this rank's log-score columns [b, s, n].

    The fused path on ``log_score_shard.transpose(0, 1)`` (no copy), shift 0, not in place.
    Score entropy never reads the log-score at x_t (sum over y != x_t, and at_x0 is unused where
    x0 = x_t), so treating it as 0 changes neither the loss nor its gradient.

    Args:
        log_score_shard: [b, s, n] log-scores of vocabulary rows [vocab_offset, vocab_offset + n);
            columns from ``num_valid`` on are vocabulary padding (ignored).
        sigma: total noise [b].
    """
    return vocab_parallel_score_entropy_from_logits(
        graph_name,
        num_tokens,
        log_score_shard.transpose(0, 1),
        sigma,
        x_t,
        x0,
        vocab_offset,
        num_valid,
        tp_group,
    )
