"""The Triton score-entropy statistics against the torch path and the unfused definition.

Runs Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set before triton is used).
Three references:

* ``_TorchScoreEntropyStats`` (the torch path, ``use_triton=False``) on the same rows, with
  arbitrary shard-local x_t / x0 (negative, inside the padding, past the shard);
* ``graph.score_entropy_stats`` on the log-score s = logits - shift, 0 at x_t (the unfused
  definition), through the [s, b, V] wrapper, both memory layouts;
* the full per-token loss ``vocab_parallel_score_entropy_from_logits``, Triton vs torch.

Tolerances: float32 statistics and gradients agree to float32 rounding (the kernels sum in a
different order). bf16 / fp16 logits are compared with the references on the same values upcast
to float32; the statistics are float32 and agree to float32 rounding, the gradients are stored in
the logits' dtype, so they agree to one unit in the last place of that dtype (Triton's
interpreter truncates float32 -> bf16 casts, the GPU rounds to nearest even like torch).
"""

import pytest
import torch

from sedd_megatron.diffusion import get_graph
from sedd_megatron.kernels.score_entropy_stats import score_entropy_stats_triton, triton_supports
from sedd_megatron.models.sedd import vocab_parallel_score_entropy as se

# conftest.py's fixture: skip (saying why) where Triton's interpreter cannot run the kernels
pytestmark = pytest.mark.usefixtures("triton_interpreter")

F32 = {"rtol": 1e-5, "atol": 1e-6}
# one unit in the last place of the gradient's dtype (relative), for values stored in it
ULP = {torch.float32: F32, torch.bfloat16: {"rtol": 2**-7, "atol": 1e-6}}
ULP[torch.float16] = {"rtol": 2**-10, "atol": 1e-6}


@pytest.fixture(autouse=True)
def _single_thread():
    """Small tensors: one intra-op thread avoids oversubscribing the shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _OneRank:
    """A TP group of size 1."""

    def size(self) -> int:
        return 1


def _grads(outputs, inputs, upstream):
    outputs = [v for v in outputs if v is not None]
    return torch.autograd.grad(outputs, inputs, upstream[: len(outputs)])


def _torch_rows(logits, shift, x_t, x0, num_valid, mask_local, inplace_backward=False):
    return se._TorchScoreEntropyStats.apply(
        logits, shift, x_t, x0, num_valid, mask_local, False, inplace_backward, 1 << 20
    )


# ----------------------------------------------------------------------------------------------
# Row level: the Triton function against the torch autograd.Function, same local indices.

ROWS = 9
GRAPHS = {"absorb_mask_here": 4, "absorb_mask_off": -7, "uniform": None}


def _row_inputs(vocab, num_valid, gen):
    """x_t / x0 local columns: held, negative, in the padding, past the shard; some x0 == x_t."""
    x_t = torch.randint(0, max(num_valid, 1), (ROWS,), generator=gen)
    x0 = torch.randint(0, max(num_valid, 1), (ROWS,), generator=gen)
    x_t[0], x0[0] = -3, 2  # x_t off-shard (before it)
    x_t[1], x0[1] = 1, -1  # x0 off-shard
    x_t[2], x0[2] = vocab + 5, vocab  # both past the shard
    x_t[3], x0[3] = num_valid, max(num_valid - 1, 0)  # x_t in the padding (if any)
    x0[4] = x_t[4]  # x0 == x_t: at_x0 = 0, no x0 term in the gradient
    x_t[5], x0[5] = 4, 4 if num_valid > 4 else 0  # x_t at the absorb MASK column
    return x_t, x0


@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "vocab,num_valid,block_v",
    [(37, 37, 8), (37, 30, 16), (37, 0, 8), (1001, 1001, None), (1001, 990, 256)],
)
@pytest.mark.parametrize("with_shift", [False, True])
def test_rows_match_torch_path(graph, dtype, vocab, num_valid, block_v, with_shift):
    mask_local = GRAPHS[graph]
    gen = torch.Generator().manual_seed(vocab * 7 + num_valid + with_shift)
    logits = (2 * torch.randn(ROWS, vocab, generator=gen)).to(dtype)
    logits[:, num_valid:] = float("nan")  # padding is never read
    x_t, x0 = _row_inputs(vocab, num_valid, gen)
    shift = 3 * torch.rand(ROWS, generator=gen) - 1 if with_shift else None
    upstream = [torch.randn(ROWS, generator=gen) for _ in range(3)]

    leaf = logits.clone().requires_grad_()
    shift_leaf = shift.clone().requires_grad_() if with_shift else None
    inputs = (leaf, shift_leaf) if with_shift else (leaf,)
    got = score_entropy_stats_triton(
        leaf, shift_leaf, x_t, x0, num_valid, mask_local, inplace_backward=False, block_v=block_v
    )
    got_grads = _grads(got, inputs, upstream)

    # the torch path on the same values upcast (padding made finite: it reads no padding
    # either, but a NaN there would survive its zero-fill only by luck)
    ref_logits = logits.float().nan_to_num(0.0).requires_grad_()
    ref_shift = shift.clone().requires_grad_() if with_shift else None
    ref_inputs = (ref_logits, ref_shift) if with_shift else (ref_logits,)
    want = _torch_rows(ref_logits, ref_shift, x_t, x0, num_valid, mask_local)
    want_grads = _grads(want, ref_inputs, upstream)

    assert len(got) == (3 if mask_local is None else 2)
    for name, g, w in zip(("exp_sum", "at_x0"), got, want, strict=False):
        assert g.dtype == torch.float32 and g.shape == (ROWS,)
        torch.testing.assert_close(g, w, **F32, msg=lambda m, name=name: f"{name}: {m}")
    if mask_local is None:  # a sum of terms of both signs: rounding relative to sum |s_y|
        s = ref_logits.detach()[:, :num_valid] - (shift[:, None] if with_shift else 0.0)
        bound = 8 * 2**-24 * s.abs().sum(1) + 1e-6
        assert ((got[2] - want[2]).abs() <= bound).all()
    grad = got_grads[0]
    assert grad.dtype == dtype and grad.shape == logits.shape
    torch.testing.assert_close(grad.float(), want_grads[0], **ULP[dtype])
    # exact zeros where the log-score is constant (held x_t) and on the padding
    held = (x_t >= 0) & (x_t < num_valid)
    at_x = grad.gather(1, x_t.clamp(0, vocab - 1)[:, None]).squeeze(1)
    assert (at_x[held] == 0).all()
    assert (grad[:, num_valid:] == 0).all()
    if with_shift:
        assert got_grads[1].dtype == torch.float32
        torch.testing.assert_close(got_grads[1], want_grads[1], **F32)
    if dtype != torch.float32:  # and the torch path run on the low-precision logits itself
        low = logits.nan_to_num(0.0).requires_grad_()
        low_grad = _grads(_torch_rows(low, shift, x_t, x0, num_valid, mask_local), low, upstream)
        torch.testing.assert_close(grad, low_grad[0], **ULP[dtype])


def test_fp16_rows():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(ROWS, 37, generator=gen).half().requires_grad_()
    x_t, x0 = _row_inputs(37, 33, gen)
    shift = torch.rand(ROWS, generator=gen)
    got = score_entropy_stats_triton(logits, shift, x_t, x0, 33, None, block_v=16)
    ref = logits.detach().float().requires_grad_()
    want = _torch_rows(ref, shift, x_t, x0, 33, None)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **F32)
    upstream = [torch.randn(ROWS, generator=gen) for _ in range(3)]
    (grad,) = _grads(got, logits, upstream)
    assert grad.dtype == torch.float16
    torch.testing.assert_close(grad.float(), _grads(want, ref, upstream)[0], **ULP[torch.float16])


# ----------------------------------------------------------------------------------------------
# [s, b, V] wrapper against the unfused definition (graph.score_entropy_stats on the log-score).

NUM_TOKENS = 50  # absorb: dim 51, MASK = 50; uniform: dim 50
SHARD = 20  # 3 shards cover 60 padded columns: the last holds MASK (absorb) and padding
SEQ, BATCH = 3, 2


def _tokens(graph, gen):
    x0 = torch.randint(0, NUM_TOKENS, (BATCH, SEQ), generator=gen)
    other = (
        torch.full_like(x0, graph.mask_id)
        if graph.absorb
        else torch.randint(0, NUM_TOKENS, (BATCH, SEQ), generator=gen)
    )
    x_t = torch.where(torch.rand(BATCH, SEQ, generator=gen) < 0.5, other, x0)
    x_t[0, 0], x0[0, 1] = x0[0, 0], x_t[0, 1]  # both x_t == x0 and x_t != x0 present
    if graph.absorb:
        x_t[0, 1] = graph.mask_id
    return x0, x_t


def _unfused(graph, logits, x_t, x0, shift, offset, num_valid):
    """The log-score of the [s, b, V] logits as SEDDModel._postprocess makes it, then the graph."""
    s = logits.transpose(0, 1).float()
    if shift is not None:
        s = s - shift[:, None, None]
    vocab = s.shape[-1]
    local = x_t - offset
    here = (local >= 0) & (local < num_valid)
    is_x = torch.nn.functional.one_hot(local.clamp(0, vocab - 1), vocab).bool() & here[..., None]
    s = s.masked_fill(is_x, 0.0).masked_fill(torch.arange(vocab) >= num_valid, 0.0)
    return graph.score_entropy_stats(s, x_t, x0, vocab_offset=offset, num_valid=num_valid)


@pytest.mark.parametrize("graph_name", ["absorb", "uniform"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["sbv", "bsv"])
@pytest.mark.parametrize("with_shift", [False, True])
def test_wrapper_matches_unfused_and_torch_path(graph_name, dtype, layout, with_shift):
    graph = get_graph(graph_name, NUM_TOKENS)
    gen = torch.Generator().manual_seed(hash((graph_name, layout, with_shift)) % 2**31)
    x0, x_t = _tokens(graph, gen)
    shift = 3 * torch.rand(BATCH, generator=gen) - 1 if with_shift else None
    upstream = [torch.randn(BATCH, SEQ, generator=gen) for _ in range(3)]
    for offset in range(0, 3 * SHARD, SHARD):
        num_valid = max(0, min(SHARD, graph.dim - offset))
        if layout == "sbv":
            leaf = torch.randn(SEQ, BATCH, SHARD, generator=gen).to(dtype).requires_grad_()
            view = leaf
        else:  # [b, s, V] memory seen as [s, b, V]
            leaf = torch.randn(BATCH, SEQ, SHARD, generator=gen).to(dtype).requires_grad_()
            view = leaf.transpose(0, 1)
        kwargs = dict(shift=shift, vocab_offset=offset, num_valid=num_valid)
        got = se.fused_score_entropy_stats(graph, view, x_t, x0, use_triton=True, **kwargs)
        (grad,) = _grads(got, leaf, upstream)
        assert grad.dtype == dtype

        ref = view.detach().float().requires_grad_()  # [s, b, V], the same values
        want = _unfused(graph, ref, x_t, x0, shift, offset, num_valid)
        (want_grad,) = _grads(want, ref, upstream)
        torch_path = se.fused_score_entropy_stats(graph, ref, x_t, x0, use_triton=False, **kwargs)
        (torch_grad,) = _grads(torch_path, ref, upstream)

        grad = grad if layout == "sbv" else grad.transpose(0, 1)
        for name, g, w, t in zip(got._fields, got, want, torch_path, strict=True):
            if w is None:
                assert g is None and t is None
                continue
            assert g.shape == (BATCH, SEQ) and g.is_contiguous() and g.dtype == torch.float32
            torch.testing.assert_close(g, w, **F32, msg=f"{name} @ {offset}")
            torch.testing.assert_close(g, t, **F32, msg=f"{name} @ {offset}")
        torch.testing.assert_close(grad.float(), want_grad, **ULP[dtype])
        torch.testing.assert_close(grad.float(), torch_grad, **ULP[dtype])
        assert (grad[..., num_valid:] == 0).all()


def test_shift_gradient_matches_unfused():
    """dL/dshift (per sequence, through the [b] -> [R] expansion) against autograd."""
    graph = get_graph("absorb", NUM_TOKENS)
    gen = torch.Generator().manual_seed(21)
    x0, x_t = _tokens(graph, gen)
    upstream = [torch.randn(BATCH, SEQ, generator=gen) for _ in range(2)]
    offset, num_valid = 2 * SHARD, graph.dim - 2 * SHARD  # the shard holding MASK
    logits = torch.randn(SEQ, BATCH, SHARD, generator=gen)
    shift = (torch.rand(BATCH, generator=gen) + 0.5).requires_grad_()
    kwargs = dict(vocab_offset=offset, num_valid=num_valid)
    got = se.fused_score_entropy_stats(
        graph, logits, x_t, x0, shift=shift, use_triton=True, **kwargs
    )
    (got_grad,) = _grads(got, shift, upstream)
    want = _unfused(graph, logits, x_t, x0, shift, offset, num_valid)
    (want_grad,) = _grads(want, shift, upstream)
    torch.testing.assert_close(got_grad, want_grad, **F32)


# ----------------------------------------------------------------------------------------------
# In-place backward and its once-only contract.


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["sbv", "bsv"])
def test_inplace_backward_writes_into_the_logits(dtype, layout):
    graph = get_graph("uniform", NUM_TOKENS)
    gen = torch.Generator().manual_seed(5)
    x0, x_t = _tokens(graph, gen)
    base = torch.randn(SEQ, BATCH, SHARD, generator=gen).to(dtype)
    if layout == "bsv":
        base = base.transpose(0, 1).contiguous().transpose(0, 1)  # [b, s, V] memory
    upstream = [torch.randn(BATCH, SEQ, generator=gen) for _ in range(3)]
    kwargs = dict(vocab_offset=SHARD, num_valid=SHARD)

    ref = base.clone().requires_grad_()
    want = se.fused_score_entropy_stats(graph, ref, x_t, x0, use_triton=True, **kwargs)
    (want_grad,) = _grads(want, ref, upstream)

    leaf = base.clone().requires_grad_()
    logits = leaf * 1  # a fresh, non-leaf activation (same layout), given away
    assert logits.stride() == base.stride()
    got = se.fused_score_entropy_stats(
        graph, logits, x_t, x0, inplace=True, use_triton=True, **kwargs
    )
    outputs = [v for v in got if v is not None]
    (grad,) = torch.autograd.grad(outputs, logits, upstream, retain_graph=True)
    assert grad.data_ptr() == logits.data_ptr()  # written over the logits' storage
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)
    torch.testing.assert_close(logits.detach(), want_grad, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        torch.autograd.grad(outputs, logits, upstream)


@pytest.mark.parametrize("inplace", [False, True])
def test_inplace_backward_false_allows_a_second_backward(inplace):
    graph = get_graph("absorb", NUM_TOKENS)
    gen = torch.Generator().manual_seed(6)
    x0, x_t = _tokens(graph, gen)
    leaf = torch.randn(SEQ, BATCH, SHARD, generator=gen).requires_grad_()
    logits = leaf * 1
    before = logits.detach().clone()
    got = se.fused_score_entropy_stats(
        graph,
        logits,
        x_t,
        x0,
        inplace=inplace,
        inplace_backward=False,
        use_triton=True,
        num_valid=SHARD,
    )
    loss = sum(v.sum() for v in got if v is not None)
    (g1,) = torch.autograd.grad(loss, leaf, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, leaf)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    assert torch.equal(logits.detach(), before)  # nothing written over the logits


def test_not_inplace_keeps_the_logits_but_runs_backward_once():
    """inplace=False: the caller's logits are untouched; inplace_backward keeps the torch path's
    once-only contract all the same."""
    graph = get_graph("uniform", NUM_TOKENS)
    gen = torch.Generator().manual_seed(7)
    x0, x_t = _tokens(graph, gen)
    logits = torch.randn(SEQ, BATCH, SHARD, generator=gen).requires_grad_()
    before = logits.detach().clone()
    got = se.fused_score_entropy_stats(graph, logits, x_t, x0, use_triton=True)
    loss = sum(v.sum() for v in got)
    loss.backward(retain_graph=True)
    assert torch.equal(logits.detach(), before)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


# ----------------------------------------------------------------------------------------------
# Dispatch and the full loss.


def test_dispatch(monkeypatch):
    graph = get_graph("absorb", NUM_TOKENS)
    gen = torch.Generator().manual_seed(8)
    x0, x_t = _tokens(graph, gen)
    calls = []
    real = se.score_entropy_stats_triton

    def spy(*args, **kwargs):
        calls.append(args[0].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(se, "score_entropy_stats_triton", spy)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        logits = torch.randn(SEQ, BATCH, SHARD, generator=gen).to(dtype)
        assert triton_supports(logits, x_t)
        se.fused_score_entropy_stats(graph, logits, x_t, x0)  # automatic: Triton
        se.fused_score_entropy_stats(graph, logits, x_t, x0, use_triton=False)
    assert calls == [torch.float32, torch.bfloat16, torch.float16]
    wide = torch.randn(SEQ, BATCH, SHARD, dtype=torch.float64, generator=gen)
    assert not triton_supports(wide)
    stats = se.fused_score_entropy_stats(graph, wide, x_t, x0)  # automatic: the torch path
    assert stats.exp_sum.dtype == torch.float64 and len(calls) == 3
    with pytest.raises(RuntimeError, match="use_triton=True"):
        se.fused_score_entropy_stats(graph, wide, x_t, x0, use_triton=True)
    monkeypatch.delenv("SEDD_TRITON_ON_CPU")  # CPU tensors, kernels not asked for: torch path
    assert not triton_supports(logits)
    se.fused_score_entropy_stats(graph, logits, x_t, x0)
    assert len(calls) == 3
    with pytest.raises(RuntimeError, match="use_triton=True"):
        se.fused_score_entropy_stats(graph, logits, x_t, x0, use_triton=True)


@pytest.mark.parametrize("graph_name", ["absorb", "uniform"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_loss_triton_equals_torch(graph_name, dtype):
    """Per-token loss and gradients (logits, shift) of the whole vocabulary (TP size 1), with the
    absorb sigma shift; Triton (in place, logits in their dtype) vs torch (float32 upcast)."""
    graph = get_graph(graph_name, NUM_TOKENS)
    gen = torch.Generator().manual_seed(9)
    x0, x_t = _tokens(graph, gen)
    sigma = torch.rand(BATCH, generator=gen) * 3 + 1e-3
    weight = torch.randn(BATCH, SEQ, generator=gen)
    vocab = 64  # padded: columns from graph.dim on are padding
    base = (torch.randn(SEQ, BATCH, vocab, generator=gen) - 1).to(dtype)
    shift_base = torch.log(torch.expm1(sigma)) + torch.log(torch.tensor(graph.dim - 1.0))
    results = {}
    for use_triton in (True, False):
        leaf = base.clone().requires_grad_()
        shift = shift_base.clone().requires_grad_()
        logits = leaf * 1 if use_triton else leaf.float() * 1  # fresh activations, given away
        loss = se.vocab_parallel_score_entropy_from_logits(
            graph_name,
            NUM_TOKENS,
            logits,
            sigma,
            x_t,
            x0,
            vocab_offset=0,
            num_valid=graph.dim,
            tp_group=_OneRank(),
            shift=shift,
            inplace=True,
            use_triton=use_triton,
        )
        grads = torch.autograd.grad((weight * loss).sum(), (leaf, shift))
        results[use_triton] = (loss, *grads)
    (loss, grad, grad_shift), (loss_t, grad_t, grad_shift_t) = results[True], results[False]
    torch.testing.assert_close(loss, loss_t, **F32)
    assert grad.dtype == grad_t.dtype == dtype
    torch.testing.assert_close(grad.float(), grad_t.float(), **ULP[dtype])
    torch.testing.assert_close(grad_shift, grad_shift_t, **F32)
    assert (grad[..., graph.dim :] == 0).all()
