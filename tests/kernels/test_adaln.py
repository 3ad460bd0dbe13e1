"""layer_norm_modulate: the Triton kernels (interpreter, CPU tensors) against the torch reference,
for LayerNorm and for RMSNorm (``rms=True``).

fp32: forward and every gradient agree with the reference to fp32 rounding (rtol/atol 1e-5;
the kernels sum in another order). bf16: the fused op and the reference are both compared with
the exact fp64 result (see ``check_bf16`` in conftest.py: one bf16 ulp, no worse than the
reference by more than one ulp). Shapes cover odd, non-power-of-two and tiny hidden sizes, and
a backward split into many row chunks with a ragged last one.
"""

import functools

import pytest
import torch
import torch.nn.functional as F

from sedd_megatron.kernels import dispatch, triton_usable
from sedd_megatron.kernels.adaln import (
    layer_norm_modulate,
    layer_norm_modulate_reference,
)

EPS = 1e-5
# (s, b, H) and the MIN_ROWS_PER_CHUNK to run the backward with (None: the defaults, which give
# these few rows one row per chunk to reach dispatch.MIN_PROGRAMS; a number also turns that off)
CASES = [
    ((7, 3, 48), None),
    ((5, 2, 100), None),
    ((1, 1, 8), None),
    ((19, 2, 40), 2),  # 10 chunks of 2 sequence rows, the last one holding 1
]
FUSED_NODE = "_LayerNormModulateBackward"


def _inputs(shape, dtype, seed=0):
    """x with a non-zero mean, weight near 1, shift and scale [b, H]; all in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    s, b, h = shape
    x = torch.randn(s, b, h, generator=gen) * 2.0 + 0.5
    weight = 1.0 + 0.2 * torch.randn(h, generator=gen)
    shift = 0.5 * torch.randn(b, h, generator=gen)
    scale = 0.5 * torch.randn(b, h, generator=gen)
    dy = torch.randn(s, b, h, generator=gen)
    return [t.to(dtype) for t in (x, weight, shift, scale)], dy.to(dtype)


def _run(fn, inputs, dy):
    """fn's output and the gradients of <output, dy> for every input."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, leaves, dy)


def _fused(x, w, shift, scale, rms=False):
    y = layer_norm_modulate(x, w, shift, scale, EPS, rms=rms)
    assert type(y.grad_fn).__name__ == FUSED_NODE, "the Triton path did not run"
    return y


def _reference(x, w, shift, scale, rms=False):
    return layer_norm_modulate(x, w, shift, scale, EPS, fused=False, rms=rms)


def _exact(x, w, shift, scale, rms=False):
    """The same math in fp64 (torch's own layer_norm / rms_norm)."""
    norm = F.rms_norm if rms else F.layer_norm
    h = norm(x.double(), (x.shape[-1],), eps=EPS) * w.double()
    return h * (1 + scale.double()) + shift.double()


RMS = pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])


NAMES = ("y", "dx", "dweight", "dshift", "dscale")


def _chunking(monkeypatch, min_rows):
    """Chunks of ``min_rows`` rows, without the minimum program count (None: the defaults)."""
    if min_rows is not None:
        monkeypatch.setattr(dispatch, "MIN_ROWS_PER_CHUNK", min_rows)
        monkeypatch.setattr(dispatch, "MIN_PROGRAMS", 1)


@pytest.mark.usefixtures("triton_interpreter")
@RMS
@pytest.mark.parametrize("shape,min_rows", CASES)
def test_fp32_matches_reference(shape, min_rows, rms, monkeypatch):
    _chunking(monkeypatch, min_rows)
    inputs, dy = _inputs(shape, torch.float32)
    y, grads = _run(functools.partial(_fused, rms=rms), inputs, dy)
    y_ref, grads_ref = _run(functools.partial(_reference, rms=rms), inputs, dy)
    for name, got, want in zip(NAMES, (y, *grads), (y_ref, *grads_ref), strict=True):
        assert got.dtype == want.dtype == torch.float32, name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.usefixtures("triton_interpreter")
@RMS
@pytest.mark.parametrize("shape,min_rows", CASES)
def test_bf16_within_one_ulp_of_exact(shape, min_rows, rms, monkeypatch, check_bf16):
    _chunking(monkeypatch, min_rows)
    inputs, dy = _inputs(shape, torch.bfloat16, seed=1)
    y, grads = _run(functools.partial(_fused, rms=rms), inputs, dy)
    y_ref, grads_ref = _run(functools.partial(_reference, rms=rms), inputs, dy)
    exact = functools.partial(_exact, rms=rms)
    y_ex, grads_ex = _run(exact, [t.double() for t in inputs], dy.double())
    for name, got, ref, exact in zip(
        NAMES, (y, *grads), (y_ref, *grads_ref), (y_ex, *grads_ex), strict=True
    ):
        assert got.dtype == torch.bfloat16, name
        check_bf16(name, got, ref, exact)


@pytest.mark.usefixtures("triton_interpreter")
def test_mixed_dtypes_return_each_inputs_dtype():
    """x bf16 with fp32 weight / shift / scale: y in bf16, each gradient in its input's dtype."""
    (x, w, shift, scale), dy = _inputs((4, 2, 24), torch.float32, seed=2)
    inputs = [x.bfloat16(), w, shift, scale.half()]
    y, grads = _run(_fused, inputs, dy.bfloat16())
    y_ref, grads_ref = _run(_reference, inputs, dy.bfloat16())
    assert y.dtype == torch.bfloat16
    assert [g.dtype for g in grads] == [t.dtype for t in inputs]
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2**-7, atol=1e-2)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=2e-2)


@pytest.mark.usefixtures("triton_interpreter")
def test_strided_inputs_and_modulation_slices():
    """x transposed from [b, s, H]; shift / scale column slices of one [b, 6H] projection."""
    gen = torch.Generator().manual_seed(3)
    s, b, h = 6, 3, 20
    x = torch.randn(b, s, h, generator=gen).transpose(0, 1)  # [s, b, H], not contiguous
    w = torch.randn(h, generator=gen)
    mod = torch.randn(b, 6 * h, generator=gen)
    dy = torch.randn(s, b, h, generator=gen)

    def run(fn):
        xl, wl, modl = (t.clone().requires_grad_() for t in (x, w, mod))
        shift, scale = modl.chunk(6, dim=-1)[:2]  # row stride 6H
        y = fn(xl, wl, shift, scale)
        return y, torch.autograd.grad(y, (xl, wl, modl), dy)

    y, grads = run(_fused)
    y_ref, grads_ref = run(_reference)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("shape", [(3, 16), (2, 3, 2, 16)])
def test_other_leading_dims(shape):
    """x [b, H] (no sequence dim) and [s1, s2, b, H]: rows still belong to batch r % b."""
    gen = torch.Generator().manual_seed(4)
    b, h = shape[-2], shape[-1]
    x, dy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    inputs = [x, torch.randn(h, generator=gen)] + [torch.randn(b, h, generator=gen)] * 2
    y, grads = _run(_fused, inputs, dy)
    y_ref, grads_ref = _run(_reference, inputs, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unfused_is_the_reference_exactly():
    (x, w, shift, scale), _ = _inputs((5, 2, 100), torch.bfloat16)
    y = layer_norm_modulate(x, w, shift, scale, EPS, fused=False)
    assert torch.equal(y, layer_norm_modulate_reference(x, w, shift, scale, EPS))
    h = F.layer_norm(x.float(), (100,), eps=EPS) * w.float()
    spec = (h * (1 + scale.float().unsqueeze(0)) + shift.float().unsqueeze(0)).to(x.dtype)
    assert torch.equal(y, spec)
    y_rms = layer_norm_modulate(x, w, shift, scale, EPS, fused=False, rms=True)
    assert torch.equal(y_rms, layer_norm_modulate_reference(x, w, shift, scale, EPS, rms=True))


@pytest.mark.parametrize("eps", [EPS, 0.5])
def test_rms_reference_is_rms_norm(eps):
    """The rms reference against torch's rms_norm in fp64 (independent formula), eps included:
    float32 results within fp32 rounding of the exact ones."""
    (x, w, shift, scale), _ = _inputs((6, 3, 40), torch.float32, seed=5)
    got = layer_norm_modulate_reference(x, w, shift, scale, eps, rms=True)
    h = F.rms_norm(x.double(), (40,), weight=w.double(), eps=eps)
    want = h * (1 + scale.double()) + shift.double()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


@RMS
@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
def test_rms_flag_selects_the_norm(fused, rms, request):
    """On input with a nonzero row mean the two norms differ; each path gives the one asked for
    (the fp64 truth of that norm), so neither path can ignore the flag."""
    if fused:
        request.getfixturevalue("triton_interpreter")
    (x, w, shift, scale), dy = _inputs((4, 2, 32), torch.float32, seed=6)
    x = x + 3.0  # row means far from zero
    run = functools.partial(_fused if fused else _reference, rms=rms)
    y, grads = _run(run, [x, w, shift, scale], dy)
    for other in (False, True):
        y_ex, grads_ex = _run(
            functools.partial(_exact, rms=other), [t.double() for t in (x, w, shift, scale)], dy
        )
        same = all(
            torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4)
            for got, want in zip((y, *grads), (y_ex, *grads_ex), strict=True)
        )
        assert same == (other == rms), f"rms={rms}: matches the rms={other} truth: {same}"


@pytest.mark.usefixtures("triton_interpreter")
def test_too_wide_rows_fall_back_to_the_reference(monkeypatch):
    from sedd_megatron.kernels import adaln

    monkeypatch.setattr(adaln, "MAX_FUSED_HIDDEN", 32)
    (x, w, shift, scale), _ = _inputs((2, 2, 48), torch.float32)
    y = layer_norm_modulate(x.requires_grad_(), w, shift, scale)
    assert type(y.grad_fn).__name__ != FUSED_NODE
    assert torch.equal(y, layer_norm_modulate_reference(x, w, shift, scale))


@pytest.mark.parametrize(
    "bad",
    [
        {"weight": torch.ones(47)},
        {"shift": torch.zeros(2, 48)},  # b is 3
        {"scale": torch.zeros(48)},
        {"x": torch.zeros(48)},
        {"x": torch.zeros(7, 3, 48, dtype=torch.int64)},
    ],
)
def test_bad_shapes_raise(bad):
    (x, w, shift, scale), _ = _inputs((7, 3, 48), torch.float32)
    args = {"x": x, "weight": w, "shift": shift, "scale": scale, **bad}
    with pytest.raises(ValueError):
        layer_norm_modulate(**args)


def test_triton_usable_rules(monkeypatch):
    cpu = torch.zeros(2)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_usable(cpu, None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_usable(cpu, None) == (dispatch.HAVE_TRITON and dispatch.interpreter_ready())
    monkeypatch.delenv("SEDD_TRITON_ON_CPU")  # CPU tensors need the explicit request
    assert not triton_usable(cpu, None)
    monkeypatch.setenv("SEDD_TRITON_ON_CPU", "1")
    monkeypatch.setattr(dispatch, "HAVE_TRITON", False)
    assert not triton_usable(cpu)
