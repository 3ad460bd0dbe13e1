"""bias_gelu: the Triton kernels (interpreter, CPU tensors) against the torch reference.

fp32: forward and gradients agree with ``F.gelu(x + bias, approximate="tanh")`` to fp32
rounding (rtol/atol 1e-5). bf16: the fused op adds the bias in fp32 and rounds once, the
reference rounds x + bias to bf16 first; both are compared with the exact fp64 result
(``check_bf16``). Large |x + bias| must not overflow the exp-based tanh.
"""

import pytest
import torch
import torch.nn.functional as F

from sedd_megatron.kernels import dispatch, gelu
from sedd_megatron.kernels.gelu import bias_gelu, bias_gelu_reference

FUSED_NODE = "_BiasGeluBackward"
# x shape, MIN_ROWS_PER_CHUNK and MAX_BLOCK to run with (None: the defaults,
# which give these few rows one row per chunk to reach dispatch.MIN_PROGRAMS)
CASES = [
    ((7, 3, 48), None, None),
    ((5, 2, 100), None, 32),  # 4 column blocks, the last one ragged
    ((1, 1, 8), None, None),
    ((19, 2, 40), 2, None),  # 19 chunks of 2 rows, the last one holding 1
    ((3, 200), None, None),  # 2-D [tokens, F]
]
NAMES = ("y", "dx", "dbias")


def _inputs(shape, dtype, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(shape, generator=gen)
    bias_t = torch.randn(shape[-1], generator=gen) if bias else None
    dy = torch.randn(shape, generator=gen)
    return [x.to(dtype), bias_t.to(dtype) if bias else None], dy.to(dtype)


def _run(fn, inputs, dy):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    y = fn(*leaves)
    present = [t for t in leaves if t is not None]
    grads = list(torch.autograd.grad(y, present, dy.to(y.dtype)))
    return [y, *grads]


def _fused(x, bias):
    y = bias_gelu(x, bias)
    assert type(y.grad_fn).__name__ == FUSED_NODE, "the Triton path did not run"
    return y


def _reference(x, bias):
    return bias_gelu(x, bias, fused=False)


def _exact(x, bias):
    """gelu_tanh(x + bias) in fp64, written out."""
    u = x.double() + (bias.double() if bias is not None else 0.0)
    return 0.5 * u * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (u + 0.044715 * u**3)))


def _setup(monkeypatch, min_rows, max_block):
    if min_rows is not None:  # chunks of min_rows rows, without the minimum program count
        monkeypatch.setattr(dispatch, "MIN_ROWS_PER_CHUNK", min_rows)
        monkeypatch.setattr(dispatch, "MIN_PROGRAMS", 1)
    if max_block is not None:
        monkeypatch.setattr(gelu, "MAX_BLOCK", max_block)


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("shape,min_rows,max_block", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_matches_reference(shape, min_rows, max_block, bias, monkeypatch):
    _setup(monkeypatch, min_rows, max_block)
    inputs, dy = _inputs(shape, torch.float32, bias=bias)
    got, want = _run(_fused, inputs, dy), _run(_reference, inputs, dy)
    assert len(got) == len(want) == (3 if bias else 2)
    for name, a, b in zip(NAMES, got, want, strict=False):
        assert a.dtype == b.dtype == torch.float32, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("shape,min_rows,max_block", CASES)
def test_bf16_within_one_ulp_of_exact(shape, min_rows, max_block, monkeypatch, check_bf16):
    _setup(monkeypatch, min_rows, max_block)
    inputs, dy = _inputs(shape, torch.bfloat16, seed=1)
    got, want = _run(_fused, inputs, dy), _run(_reference, inputs, dy)
    exact = _run(_exact, [t.double() for t in inputs], dy.double())
    for name, a, b, e in zip(NAMES, got, want, exact, strict=True):
        assert a.dtype == torch.bfloat16, name
        check_bf16(name, a, b, e)


@pytest.mark.usefixtures("triton_interpreter")
def test_large_inputs_stay_finite():
    """|x + bias| up to 1e4: gelu(u) -> u or 0, gelu'(u) -> 1 or 0, no inf / nan."""
    x = torch.tensor([[-1e4, -300.0, -20.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 20.0, 300.0, 1e4]])
    inputs, dy = [x, torch.zeros(x.shape[-1])], torch.ones_like(x)
    got, want = _run(_fused, inputs, dy), _run(_reference, inputs, dy)
    for name, a, b in zip(NAMES, got, want, strict=True):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.usefixtures("triton_interpreter")
def test_fp32_bias_with_bf16_x():
    """Output and dx in x's dtype, dbias in the bias's."""
    (x, bias), dy = _inputs((4, 24), torch.float32, seed=2)
    x, dy = x.bfloat16(), dy.bfloat16()
    y, dx, dbias = _run(_fused, [x, bias], dy)
    assert (y.dtype, dx.dtype, dbias.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)
    y_ex, dx_ex, dbias_ex = _run(_exact, [x.double(), bias.double()], dy.double())
    torch.testing.assert_close(y.double(), y_ex, rtol=2**-7, atol=1e-5)
    torch.testing.assert_close(dx.double(), dx_ex, rtol=2**-7, atol=1e-5)
    # dbias sums the fp32 dx before any rounding to bf16: fp32 accuracy
    torch.testing.assert_close(dbias.double(), dbias_ex, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("triton_interpreter")
def test_strided_input():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=gen).t()  # [6, 40], not contiguous
    inputs, dy = [x, torch.randn(40, generator=gen)], torch.randn(6, 40, generator=gen)
    got, want = _run(_fused, inputs, dy), _run(_reference, inputs, dy)
    for name, a, b in zip(NAMES, got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_unfused_is_the_reference_exactly():
    (x, bias), _ = _inputs((5, 2, 100), torch.bfloat16)
    y = bias_gelu(x, bias, fused=False)
    assert torch.equal(y, bias_gelu_reference(x, bias))
    assert torch.equal(y, F.gelu(x + bias, approximate="tanh"))
    assert torch.equal(bias_gelu(x, None, fused=False), F.gelu(x, approximate="tanh"))


def test_bad_bias_raises():
    with pytest.raises(ValueError):
        bias_gelu(torch.zeros(3, 8), torch.zeros(7))
    with pytest.raises(ValueError):
        bias_gelu(torch.zeros(3, 8), torch.zeros(3, 8))
