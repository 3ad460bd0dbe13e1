"""The fused score-entropy statistics op against the unfused reference, on CPU, no process group.

Reference: ``SEDDModel._postprocess``'s math written out (log-score = logits - shift, exactly 0
at x_t, padding set finite) followed by ``graph.score_entropy_stats``, differentiated by autograd.
The fused op must give the same statistics and the same gradient with respect to the logits
(and to the shift), for both graphs, on every kind of shard: holding MASK, with padding, not
holding x0 / x_t, with x_t == x0 and x_t != x0, masked and unmasked positions.
"""

import pytest
import torch

from sedd_megatron.diffusion import get_graph
from sedd_megatron.models.sedd.vocab_parallel_score_entropy import (
    fused_score_entropy_stats,
    vocab_parallel_score_entropy,
)

NUM_TOKENS = 50  # absorb: dim 51, MASK = 50; uniform: dim 50
SHARD = 16  # 4 shards cover 64 padded columns: the last one holds MASK and padding
SEQ, BATCH = 7, 3


class _OneRank:
    """Stands in for a TP group of size 1 (the op itself never communicates)."""

    def size(self) -> int:
        return 1


def make_tokens(graph, gen):
    """x0, x_t [b, s]: about half the positions corrupted (MASK / a uniform draw, maybe x0)."""
    x0 = torch.randint(0, NUM_TOKENS, (BATCH, SEQ), generator=gen)
    corrupt = torch.rand(BATCH, SEQ, generator=gen) < 0.5
    if graph.absorb:
        other = torch.full_like(x0, graph.mask_id)
    else:
        other = torch.randint(0, NUM_TOKENS, (BATCH, SEQ), generator=gen)
    x_t = torch.where(corrupt, other, x0)
    return x0, x_t


def reference_stats(graph, logits, x_t, x0, shift, offset, num_valid):
    """_postprocess-equivalent log-score [b, s, V] of the [s, b, V] logits, then the graph's."""
    s = logits.transpose(0, 1)
    if shift is not None:
        s = s - shift[:, None, None]
    vocab = s.shape[-1]
    local = x_t - offset
    here = (local >= 0) & (local < num_valid)
    is_x = torch.nn.functional.one_hot(local.clamp(0, vocab - 1), vocab).bool() & here[..., None]
    s = s.masked_fill(is_x, 0.0)
    s = s.masked_fill(torch.arange(vocab) >= num_valid, 0.0)
    return graph.score_entropy_stats(s, x_t, x0, vocab_offset=offset, num_valid=num_valid)


def shards(graph):
    """(vocab_offset, num_valid) of the 4 shards of the padded vocabulary."""
    return [(o, max(0, min(SHARD, graph.dim - o))) for o in range(0, 4 * SHARD, SHARD)]


def grads_of(stats, inputs, upstream):
    outputs = [v for v in stats if v is not None]
    return torch.autograd.grad(outputs, inputs, upstream[: len(outputs)])


@pytest.mark.parametrize("graph_name", ["absorb", "uniform"])
@pytest.mark.parametrize("with_shift", [False, True])
@pytest.mark.parametrize("layout", ["sbv", "bsv"])
@pytest.mark.parametrize("chunk_bytes", [None, 4 * SHARD * 2])
@pytest.mark.parametrize("inplace", [False, True])
def test_matches_reference_forward_and_backward(
    graph_name, with_shift, layout, chunk_bytes, inplace
):
    graph = get_graph(graph_name, NUM_TOKENS)
    gen = torch.Generator().manual_seed(hash((graph_name, with_shift, layout)) % 2**31)
    x0, x_t = make_tokens(graph, gen)
    assert (x_t == x0).any() and (x_t != x0).any()
    shift = 3 * torch.rand(BATCH, generator=gen) - 1 if with_shift else None
    upstream = [torch.randn(BATCH, SEQ, generator=gen) for _ in range(3)]
    for offset, num_valid in shards(graph):
        if layout == "sbv":
            leaf = torch.randn(SEQ, BATCH, SHARD, generator=gen)
        else:  # [b, s, V] memory seen as [s, b, V]: the log-score layout callers have
            leaf = torch.randn(BATCH, SEQ, SHARD, generator=gen).transpose(0, 1)
        leaf.requires_grad_()
        want = reference_stats(graph, leaf, x_t, x0, shift, offset, num_valid)
        want_grad = grads_of(want, leaf, upstream)[0]

        logits = leaf.clone() if inplace else leaf  # in place needs a fresh, non-leaf tensor
        got = fused_score_entropy_stats(
            graph,
            logits,
            x_t,
            x0,
            shift=shift,
            vocab_offset=offset,
            num_valid=num_valid,
            inplace=inplace,
            chunk_bytes=chunk_bytes,
        )
        assert (got.log_sum is None) == graph.absorb
        for name, g, w in zip(got._fields, got, want, strict=True):
            if w is None:
                continue
            assert g.shape == (BATCH, SEQ) and g.is_contiguous(), name
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, msg=f"{name} @ {offset}")
        grad = grads_of(got, leaf, upstream)[0]
        torch.testing.assert_close(grad, want_grad, rtol=1e-6, atol=1e-6)
        # What the test meant to cover: the current token's column has no gradient, padding none.
        local = (x_t - offset).t()
        here = (local >= 0) & (local < num_valid)
        at_x = grad.gather(-1, local.clamp(0, SHARD - 1)[..., None]).squeeze(-1)
        assert (at_x[here] == 0).all()
        assert (grad[..., num_valid:] == 0).all()


def test_shards_cover_the_cases():
    """The shards above include one with MASK, one with padding, and tokens off every shard."""
    graph = get_graph("absorb", NUM_TOKENS)
    o3, n3 = shards(graph)[-1]
    assert o3 <= graph.mask_id < o3 + n3 and n3 < SHARD
    gen = torch.Generator().manual_seed(0)
    x0, _ = make_tokens(graph, gen)
    for offset, num_valid in shards(graph):
        assert ((x0 < offset) | (x0 >= offset + num_valid)).any()


@pytest.mark.parametrize("graph_name", ["absorb", "uniform"])
def test_bf16_logits_upcast(graph_name):
    """bf16 logits: float32 statistics equal to the reference on the upcast logits."""
    graph = get_graph(graph_name, NUM_TOKENS)
    gen = torch.Generator().manual_seed(7)
    x0, x_t = make_tokens(graph, gen)
    shift = torch.rand(BATCH, generator=gen)
    offset, num_valid = shards(graph)[-1]
    leaf = torch.randn(SEQ, BATCH, SHARD, generator=gen).bfloat16().requires_grad_()
    got = fused_score_entropy_stats(
        graph, leaf, x_t, x0, shift=shift, vocab_offset=offset, num_valid=num_valid
    )
    want = reference_stats(graph, leaf.float(), x_t, x0, shift, offset, num_valid)
    for g, w in zip(got, want, strict=True):
        if w is not None:
            assert g.dtype == torch.float32
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    upstream = [torch.randn(BATCH, SEQ, generator=gen) for _ in range(3)]
    grad = grads_of(got, leaf, upstream)[0]
    want_grad = grads_of(want, leaf, upstream)[0]
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad, want_grad)


@pytest.mark.parametrize("graph_name", ["absorb", "uniform"])
@pytest.mark.parametrize("shard", [0, 3])
def test_gradcheck_float64(graph_name, shard):
    """Analytic gradients (logits and shift) against finite differences, float64."""
    graph = get_graph(graph_name, NUM_TOKENS)
    gen = torch.Generator().manual_seed(11)
    x0, x_t = make_tokens(graph, gen)
    x0, x_t = x0[:2, :3], x_t[:2, :3]
    if graph.absorb:  # both a masked and an unmasked position
        x_t[0, 0], x_t[1, 1] = graph.mask_id, x0[1, 1]
    offset, num_valid = shards(graph)[shard]
    # x0 and x_t in this shard at some positions, so that every gradient term is exercised
    x0[0, 1], x_t[0, 1] = offset + 1, offset + 2
    x0[1, 2] = x_t[1, 2] = offset
    logits = torch.randn(3, 2, SHARD, dtype=torch.float64, generator=gen, requires_grad=True)
    shift = torch.rand(2, dtype=torch.float64, generator=gen, requires_grad=True)

    def fn(logits, shift):
        stats = fused_score_entropy_stats(
            graph,
            logits,
            x_t,
            x0,
            shift=shift,
            vocab_offset=offset,
            num_valid=num_valid,
            inplace_backward=False,
            chunk_bytes=8 * SHARD * 4,  # 4 rows per chunk: 2 chunks
        )
        return tuple(v for v in stats if v is not None)

    assert torch.autograd.gradcheck(fn, (logits, shift))


def test_backward_runs_once_when_buffer_reused():
    graph = get_graph("uniform", NUM_TOKENS)
    gen = torch.Generator().manual_seed(3)
    x0, x_t = make_tokens(graph, gen)
    logits = torch.randn(SEQ, BATCH, SHARD, generator=gen, requires_grad=True)
    stats = fused_score_entropy_stats(graph, logits, x_t, x0)
    loss = sum(v.sum() for v in stats)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.parametrize("graph_name", ["absorb", "uniform"])
def test_vocab_parallel_score_entropy_equals_full_vocabulary_loss(graph_name):
    """The [b, s, V] log-score entry point: same loss and gradient as ``graph.score_entropy``.

    The log-score here is not 0 at x_t: score entropy never uses that entry, so the fused op's
    treating it as 0 changes neither the loss nor its gradient.
    """
    graph = get_graph(graph_name, NUM_TOKENS)
    gen = torch.Generator().manual_seed(5)
    x0, x_t = make_tokens(graph, gen)
    sigma = torch.rand(BATCH, generator=gen) * 3 + 1e-3
    weight = torch.randn(BATCH, SEQ, generator=gen)
    log_score = (torch.randn(BATCH, SEQ, graph.dim, generator=gen) - 2).requires_grad_()
    want = graph.score_entropy(log_score, sigma[:, None], x_t, x0)
    (want_grad,) = torch.autograd.grad((weight * want).sum(), log_score)
    got = vocab_parallel_score_entropy(
        graph_name,
        NUM_TOKENS,
        log_score,
        sigma,
        x_t,
        x0,
        vocab_offset=0,
        num_valid=graph.dim,
        tp_group=_OneRank(),
    )
    (grad,) = torch.autograd.grad((weight * got).sum(), log_score)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-6, atol=1e-6)
