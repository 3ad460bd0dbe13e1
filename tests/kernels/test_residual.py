"""gated_residual: the Triton kernels (interpreter, CPU tensors) against the torch reference.

Without dropout (p = 0, or not training) the fused op is the reference: fp32 results agree to
fp32 rounding, bf16 ones lie within one bf16 ulp of the exact fp64 result (``check_bf16``).
With dropout the mask is recovered from the output (residual 0, so out = gate * mask * v/(1-p)
exactly where kept and 0 where dropped): the kept fraction must lie in a 5-sigma binomial band
around 1 - p, the output and every gradient must follow that mask, torch.manual_seed must
reproduce it, and a replay after restoring torch's RNG state (activation recomputation) must
draw the same mask.
"""

import pytest
import torch

from sedd_megatron.kernels import dispatch, residual
from sedd_megatron.kernels.residual import gated_residual, gated_residual_reference

FUSED_NODE = "_GatedResidualBackward"
# (s, b, H), MIN_ROWS_PER_CHUNK and MAX_BLOCK to run with (None: the defaults,
# which give these few rows one row per chunk to reach dispatch.MIN_PROGRAMS)
CASES = [
    ((7, 3, 48), None, None),
    ((5, 2, 100), None, 32),  # 4 column blocks, the last one ragged
    ((1, 1, 8), None, None),
    ((19, 2, 40), 2, None),  # 10 row chunks, the last one holding 1 sequence row
]
NAMES = ("out", "d_branch", "d_bias", "d_gate", "d_residual")


def _inputs(shape, dtype, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    s, b, h = shape
    branch = torch.randn(s, b, h, generator=gen)
    bias_t = torch.randn(h, generator=gen) if bias else None
    gate = torch.randn(b, h, generator=gen)
    res = torch.randn(s, b, h, generator=gen)
    dout = torch.randn(s, b, h, generator=gen)
    cast = [t.to(dtype) if t is not None else None for t in (branch, bias_t, gate, res)]
    return cast, dout.to(dtype)


def _run(fn, inputs, dout, **kwargs):
    """fn's output and the gradients of <output, dout> for every (non-None) input."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves, **kwargs)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(out, present, dout.to(out.dtype)))
    return out, [next(grads) if t is not None else None for t in leaves]


def _fused(*args, **kwargs):
    out = gated_residual(*args, **kwargs)
    assert type(out.grad_fn).__name__ == FUSED_NODE, "the Triton path did not run"
    return out


def _reference(*args, **kwargs):
    return gated_residual(*args, fused=False, **kwargs)


def _exact(branch, bias, gate, res):
    """No dropout, in fp64."""
    v = branch.double() + (bias.double() if bias is not None else 0.0)
    return res.double() + gate.double() * v


def _pairs(out, grads):
    """(name, tensor) for the output and the gradients, in NAMES order, skipping None."""
    d_branch, d_bias, d_gate, d_res = grads
    values = (out, d_branch, d_bias, d_gate, d_res)
    return [(n, t) for n, t in zip(NAMES, values, strict=True) if t is not None]


def _setup(monkeypatch, min_rows, max_block):
    if min_rows is not None:  # chunks of min_rows rows, without the minimum program count
        monkeypatch.setattr(dispatch, "MIN_ROWS_PER_CHUNK", min_rows)
        monkeypatch.setattr(dispatch, "MIN_PROGRAMS", 1)
    if max_block is not None:
        monkeypatch.setattr(residual, "MAX_BLOCK", max_block)


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("shape,min_rows,max_block", CASES)
@pytest.mark.parametrize("p,training", [(0.0, True), (0.3, False)])
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_without_dropout_matches_reference(
    shape, min_rows, max_block, p, training, bias, monkeypatch
):
    _setup(monkeypatch, min_rows, max_block)
    inputs, dout = _inputs(shape, torch.float32, bias=bias)
    got = _run(_fused, inputs, dout, p=p, training=training)
    want = _run(_reference, inputs, dout, p=p, training=training)
    for (name, a), (_, b) in zip(_pairs(*got), _pairs(*want), strict=True):
        assert a.dtype == b.dtype == torch.float32, name
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("shape,min_rows,max_block", CASES)
def test_bf16_without_dropout_within_one_ulp_of_exact(
    shape, min_rows, max_block, monkeypatch, check_bf16
):
    _setup(monkeypatch, min_rows, max_block)
    inputs, dout = _inputs(shape, torch.bfloat16, seed=1)
    got = _run(_fused, inputs, dout)
    want = _run(_reference, inputs, dout)
    exact = _run(_exact, [t.double() for t in inputs], dout.double())
    for (name, a), (_, b), (_, e) in zip(_pairs(*got), _pairs(*want), _pairs(*exact), strict=True):
        assert a.dtype == torch.bfloat16, name
        check_bf16(name, a, b, e)


@pytest.mark.usefixtures("triton_interpreter")
def test_output_in_residual_dtype_grads_in_input_dtypes():
    """bf16 branch / gate, fp32 bias, fp32 residual (e.g. fp32 residual stream)."""
    (branch, bias, gate, res), dout = _inputs((3, 2, 16), torch.float32, seed=2)
    inputs = [branch.bfloat16(), bias, gate.bfloat16(), res]
    out, grads = _run(_fused, inputs, dout)
    assert out.dtype == torch.float32
    assert [g.dtype for g in grads] == [t.dtype for t in inputs]
    exact = _exact(*inputs)
    torch.testing.assert_close(out.double(), exact, rtol=1e-6, atol=1e-6)


@pytest.mark.usefixtures("triton_interpreter")
def test_strided_inputs_and_gate_slice():
    """branch transposed from [b, s, H]; gate a column slice of a [b, 6H] projection."""
    gen = torch.Generator().manual_seed(3)
    s, b, h = 6, 3, 20
    branch = torch.randn(b, s, h, generator=gen).transpose(0, 1)
    bias, res = torch.randn(h, generator=gen), torch.randn(s, b, h, generator=gen)
    mod, dout = torch.randn(b, 6 * h, generator=gen), torch.randn(s, b, h, generator=gen)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (branch, bias, mod, res)]
        out = fn(leaves[0], leaves[1], leaves[2].chunk(6, dim=-1)[2], leaves[3])
        return out, torch.autograd.grad(out, leaves, dout)

    out, grads = run(_fused)
    out_ref, grads_ref = run(_reference)
    torch.testing.assert_close(out, out_ref, rtol=1e-6, atol=1e-6)
    for a, b_ in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-6, atol=1e-6)


# --- dropout --------------------------------------------------------------------------------

P = 0.3
# 51200 elements for the kept-fraction band (4 column blocks of 1024, the last one ragged), and
# fewer where only equality of masks matters: the interpreter runs Philox slowly.
BIG, SMALL = (8, 2, 3200), (4, 2, 640)


def _dropout_inputs(shape, seed=5):
    (branch, bias, gate, res), dout = _inputs(shape, torch.float32, seed=seed)
    return branch, bias, gate, res, dout


def _mask(branch, bias, gate, seed):
    """The dropout mask drawn after torch.manual_seed(seed), recovered from the output of a
    zero residual: out = gate * keep * (branch + bias) / (1 - p)."""
    torch.manual_seed(seed)
    out = gated_residual(branch, bias, gate, torch.zeros_like(branch), p=P)
    return out != 0


@pytest.mark.usefixtures("triton_interpreter")
def test_dropout_output_mask_and_gradients():
    branch, bias, gate, res, dout = _dropout_inputs(BIG)
    keep = _mask(branch, bias, gate, seed=11)
    n = keep.numel()
    kept = keep.double().mean().item()
    sigma = ((1 - P) * P / n) ** 0.5
    assert abs(kept - (1 - P)) < 5 * sigma, f"kept fraction {kept:.4f}, expected {1 - P}"

    leaves = [t.clone().requires_grad_() for t in (branch, bias, gate, res)]
    torch.manual_seed(11)  # the same seed: the same mask
    out = _fused(*leaves, p=P)
    d_branch, d_bias, d_gate, d_res = torch.autograd.grad(out, leaves, dout)

    dropped = keep * (branch + bias) / (1 - P)
    torch.testing.assert_close(out, res + gate * dropped, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d_branch, dout * gate * keep / (1 - P), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d_bias, d_branch.sum((0, 1)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d_gate, (dout * dropped).sum(0), rtol=1e-5, atol=1e-5)
    assert torch.equal(d_res, dout)


@pytest.mark.usefixtures("triton_interpreter")
def test_dropout_seeding():
    """Same torch seed, same mask; another seed, or the next call, another mask."""
    branch, bias, gate, _, _ = _dropout_inputs(SMALL)
    first = _mask(branch, bias, gate, seed=21)
    assert torch.equal(first, _mask(branch, bias, gate, seed=21))
    assert not torch.equal(first, _mask(branch, bias, gate, seed=22))

    torch.manual_seed(21)
    zeros = torch.zeros_like(branch)
    a = gated_residual(branch, bias, gate, zeros, p=P)
    b = gated_residual(branch, bias, gate, zeros, p=P)
    assert not torch.equal(a != 0, b != 0), "consecutive calls must draw fresh masks"


@pytest.mark.usefixtures("triton_interpreter")
def test_dropout_replays_after_restoring_the_rng_state():
    """Activation recomputation restores torch's RNG state and runs the forward again."""
    branch, bias, gate, res, _ = _dropout_inputs(SMALL)
    torch.manual_seed(31)
    torch.rand(3)  # anywhere in the stream
    state = torch.get_rng_state()
    first = gated_residual(branch, bias, gate, res, p=P)
    torch.set_rng_state(state)
    again = gated_residual(branch, bias, gate, res, p=P)
    assert torch.equal(first, again)


def test_dropout_seed_spans_64_bits():
    """Seeds come from the whole int64 range: negative ones and ones past 2^31 and 2^32 (the
    high Philox word) appear, and torch.manual_seed reproduces them."""
    torch.manual_seed(41)
    seeds = torch.cat([residual.dropout_seed(torch.device("cpu")) for _ in range(64)])
    assert seeds.dtype == torch.int64 and seeds.shape == (64,)
    assert bool((seeds < 0).any()) and bool((seeds >= 2**32).any())
    assert bool(((seeds >> 32) != 0).all()), "a high 32-bit word is zero: 31-bit seeds?"
    assert seeds.unique().numel() == 64
    torch.manual_seed(41)
    assert torch.equal(seeds[:1], residual.dropout_seed(torch.device("cpu")))


# seeds at the edges of the int64 range, and two that differ only in the high 32-bit word
EDGE_SEEDS = (-(2**63), -1, 2**63 - 1, 5, 5 + 2**32)


@pytest.mark.usefixtures("triton_interpreter")
def test_dropout_with_64_bit_seeds(monkeypatch):
    """With each edge seed the forward's mask is a dropout mask, and the backward regenerates
    exactly it (gradients against the formula with that mask); the high word changes it."""
    branch, bias, gate, res, dout = _dropout_inputs(SMALL)
    masks = {}
    for value in EDGE_SEEDS:
        monkeypatch.setattr(
            residual, "dropout_seed", lambda device, v=value: torch.tensor([v], device=device)
        )
        keep = _mask(branch, bias, gate, seed=0)
        kept = keep.double().mean().item()
        assert abs(kept - (1 - P)) < 5 * ((1 - P) * P / keep.numel()) ** 0.5, (value, kept)
        leaves = [t.clone().requires_grad_() for t in (branch, bias, gate, res)]
        out = _fused(*leaves, p=P)
        d_branch, d_bias, d_gate, _ = torch.autograd.grad(out, leaves, dout)
        dropped = keep * (branch + bias) / (1 - P)
        torch.testing.assert_close(out, res + gate * dropped, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(d_branch, dout * gate * keep / (1 - P), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(d_bias, d_branch.sum((0, 1)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(d_gate, (dout * dropped).sum(0), rtol=1e-5, atol=1e-5)
        masks[value] = keep
    assert not torch.equal(masks[5], masks[5 + 2**32]), "the seed's high word is ignored"


@pytest.mark.usefixtures("triton_interpreter")
def test_dropout_everything():
    """p = 1 drops every element: out = residual, d_branch = d_bias = d_gate = 0."""
    inputs, dout = _inputs((4, 2, 24), torch.float32, seed=6)
    out, grads = _run(_fused, inputs, dout, p=1.0)
    assert torch.equal(out, inputs[3])
    for g in grads[:3]:
        assert torch.count_nonzero(g) == 0
    assert torch.equal(grads[3], dout)


def test_unfused_is_the_reference_exactly():
    (branch, bias, gate, res), _ = _inputs((5, 2, 100), torch.bfloat16)
    torch.manual_seed(7)
    out = gated_residual(branch, bias, gate, res, p=0.2, fused=False)
    torch.manual_seed(7)
    assert torch.equal(out, gated_residual_reference(branch, bias, gate, res, 0.2, True))
    torch.manual_seed(7)
    spec = res + gate.unsqueeze(0) * torch.nn.functional.dropout(branch + bias, 0.2, True)
    assert torch.equal(out, spec)


@pytest.mark.parametrize(
    "bad",
    [
        {"gate": torch.zeros(7, 48)},  # [s, H] instead of [b, H]
        {"gate": torch.zeros(3, 47)},
        {"bias": torch.zeros(3, 48)},
        {"residual": torch.zeros(7, 3, 47)},
        {"branch": torch.zeros(48), "residual": torch.zeros(48)},
        {"p": 1.5},
        {"p": -0.1},
    ],
)
def test_bad_arguments_raise(bad):
    (branch, bias, gate, res), _ = _inputs((7, 3, 48), torch.float32)
    args = {"branch": branch, "bias": bias, "gate": gate, "residual": res, **bad}
    with pytest.raises(ValueError):
        gated_residual(**args)
