"""The kernel tests run the Triton kernels on CPU tensors in Triton's interpreter: the root
conftest sets ``TRITON_INTERPRET=1`` before anything imports triton, and every test here asks for
the kernels on CPU (``SEDD_TRITON_ON_CPU=1``). The ``triton_interpreter`` fixture skips, saying
why, only where triton is missing or was imported in compiled mode (a machine with CUDA).
"""

import pytest
import torch


def interpreter_unavailable() -> str | None:
    """Why Triton's interpreter cannot run the kernels in this process, or None when it can."""
    from sedd_megatron.kernels.dispatch import HAVE_TRITON, interpreter_ready

    if not HAVE_TRITON:
        return "triton is not installed: the kernels cannot run (the torch references do)"
    if not interpreter_ready():
        return (
            "triton was imported without TRITON_INTERPRET=1 (tests/conftest.py sets it on "
            "machines without CUDA), so tl.sum / tl.rand cannot run in the interpreter"
        )
    return None


@pytest.fixture
def triton_interpreter():
    """Skips the test unless Triton's interpreter can run the kernels on CPU tensors."""
    reason = interpreter_unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _kernels_on_cpu(monkeypatch):
    """Every kernel test asks for the Triton kernels on CPU tensors."""
    monkeypatch.setenv("SEDD_TRITON_ON_CPU", "1")


def bf16_ulp(t: torch.Tensor) -> torch.Tensor:
    """Spacing of bfloat16 numbers (8 significant bits) at each value of t: 2^(e - 8) for
    2^(e-1) <= |t| < 2^e (0 at 0)."""
    t = t.double()
    _, exponent = torch.frexp(t)
    ulp = torch.ldexp(torch.ones_like(t), exponent - 8)
    return torch.where(t == 0, torch.zeros_like(t), ulp)


@pytest.fixture
def check_bf16():
    """``check(name, fused, reference, exact)``: a bf16 result against the exact fp64 one.

    The fused kernels compute in fp32 and round once, so every element must lie within one bf16
    ulp of the exact value (GPUs round to nearest, 1/2 ulp; Triton's interpreter truncates, up
    to 1 ulp), up to fp32 error far below bf16 resolution (1e-5 of the largest value). The
    unfused reference rounds several times in bf16: the fused max error may exceed the
    reference's by at most one ulp of the largest value (the interpreter's truncation).
    """

    def check(name, fused, reference, exact):
        exact = exact.double()
        scale = exact.abs().max().clamp_min(1e-30)
        err = (fused.double() - exact).abs()
        bound = bf16_ulp(exact) + 1e-5 * scale
        worst = (err - bound).argmax()
        assert bool((err <= bound).all()), (
            f"{name}: fused error {err.flatten()[worst]:.3g} above one bf16 ulp "
            f"({bound.flatten()[worst]:.3g}) at flat index {int(worst)}"
        )
        ref_err = (reference.double() - exact).abs().max()
        assert err.max() <= ref_err + bf16_ulp(scale), (
            f"{name}: fused max error {err.max():.3g} worse than the reference's {ref_err:.3g} "
            "by more than one bf16 ulp"
        )

    return check
