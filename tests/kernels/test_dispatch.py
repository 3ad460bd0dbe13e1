"""kernels/dispatch.py: backward grid sizes, the float64 fallback and the fused-kernel status line.

* Every backward reduction grid launches at least an H100's 132 SMs' worth of programs at
  micro-batch 1, sequence 1024, for the hidden sizes (and 4x FFN widths) of SEDD and larger
  models; the grids are the ops' own (``backward_grid``), so the count cannot drift from them.
* float64 tensors take the torch reference even with the kernels requested: the result is the
  reference's, bit for bit (the kernels would round it to fp32).
* ``fused_kernel_status`` names the active kernels and each reason for a fallback, and the SEDD
  model provider prints it once, on rank 0.
"""

import inspect
import math
from types import SimpleNamespace

import pytest
import torch

from sedd_megatron.kernels import adaln, dispatch, gelu, residual
from sedd_megatron.kernels.dispatch import fused_kernel_status, fused_kernel_status_of

H100_SMS = 132
SEQ, MICRO_BATCH = 1024, 1
HIDDEN_SIZES = (768, 1024, 1280, 2048, 4096, 5120, 6144, 8192)
needs_triton = pytest.mark.skipif(not dispatch.HAVE_TRITON, reason="triton is not installed")


# --- backward grids ---------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
def test_backward_grids_fill_an_h100(hidden):
    grids = {
        "adaln": adaln.backward_grid(SEQ, MICRO_BATCH)[0],
        "residual": residual.backward_grid(SEQ, MICRO_BATCH, hidden)[0],
        "gelu": gelu.backward_grid(SEQ * MICRO_BATCH, 4 * hidden)[0],
    }
    for name, grid in grids.items():
        programs = math.prod(grid)
        assert programs >= H100_SMS, f"{name} H={hidden}: {programs} programs {grid}"
    # the fp32 partial sums stay small next to the gradient ([chunks, b, H] against [s, b, H])
    assert grids["adaln"][1] <= SEQ // 4 and grids["residual"][1] <= SEQ // 4


@needs_triton
@pytest.mark.parametrize(
    ("n_rows", "n_parallel"), [(1024, 1), (1023, 3), (4096, 16), (7, 1), (1, 1), (300, 500)]
)
def test_row_chunks_cover_the_rows(n_rows, n_parallel):
    """Chunks cover every row once (the last one possibly short), none is empty, the grid
    reaches MIN_PROGRAMS / 2 programs (rounding to whole rows) whenever the rows allow it, and
    it has no more chunks than TARGET_PROGRAMS or MIN_PROGRAMS ask for."""
    n_chunks, rows = dispatch.row_chunks(n_rows, n_parallel)
    assert (n_chunks - 1) * rows < n_rows <= n_chunks * rows
    if n_rows * n_parallel >= dispatch.MIN_PROGRAMS:
        assert n_chunks * n_parallel >= dispatch.MIN_PROGRAMS // 2
    most = max(dispatch.TARGET_PROGRAMS, dispatch.MIN_PROGRAMS)
    assert n_chunks <= -(-most // n_parallel)


# --- float64 -----------------------------------------------------------------------------------


def _leaves(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def _result(fn, leaves):
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, torch.ones_like(out)), out.grad_fn


FLOAT64_OPS = {
    "adaln": (
        lambda x, w, shift, scale: adaln.layer_norm_modulate(x, w, shift, scale),
        lambda x, w, shift, scale: adaln.layer_norm_modulate_reference(x, w, shift, scale),
        ((6, 2, 40), (40,), (2, 40), (2, 40)),
    ),
    "residual": (
        lambda branch, bias, gate, res: residual.gated_residual(branch, bias, gate, res),
        lambda branch, bias, gate, res: residual.gated_residual_reference(branch, bias, gate, res),
        ((6, 2, 40), (40,), (2, 40), (6, 2, 40)),
    ),
    "gelu": (
        lambda x, bias: gelu.bias_gelu(x, bias),
        lambda x, bias: gelu.bias_gelu_reference(x, bias),
        ((6, 2, 40), (40,)),
    ),
}


@pytest.mark.usefixtures("triton_interpreter")
@pytest.mark.parametrize("name", sorted(FLOAT64_OPS))
def test_float64_runs_the_reference(name):
    """With the kernels requested (SEDD_TRITON_ON_CPU=1), float64 gives the reference's
    float64 output and gradients exactly; float32 inputs of the same op do run the kernels."""
    fn, reference, shapes = FLOAT64_OPS[name]
    leaves = _leaves(*shapes)
    out, grads, node = _result(fn, leaves)
    want, want_grads, _ = _result(reference, leaves)
    assert out.dtype == torch.float64
    assert "Backward" in type(node).__name__ and not type(node).__name__.startswith("_")
    assert torch.equal(out, want)
    for got, expected in zip(grads, want_grads, strict=True):
        assert torch.equal(got, expected)
    if name != "adaln":  # the adaLN reference itself normalises in fp32 (numerics.md §2)
        assert not torch.equal(out, out.float().double()), "float64 result is fp32-rounded"
    fused = fn(*[t.detach().float().requires_grad_() for t in leaves])
    assert type(fused.grad_fn).__name__.startswith("_"), "float32 did not run the kernels"


def test_kernel_dtypes_ok():
    half, double = torch.zeros(2, dtype=torch.float16), torch.zeros(2, dtype=torch.float64)
    assert dispatch.kernel_dtypes_ok(half, None, torch.zeros(2, dtype=torch.int64))
    assert not dispatch.kernel_dtypes_ok(half, double)


# --- status line -------------------------------------------------------------------------------

ALL_OPS = "LayerNorm+adaLN, gated residual+dropout, bias+GELU, score entropy"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_status_all_active_on_cuda(dtype):
    line = fused_kernel_status(768, dtype, have_triton=True, cuda=True)
    assert line == f"SEDD fused kernels (Triton on CUDA): active: {ALL_OPS}"


def test_status_names_the_rmsnorm_kernel_and_leaves_out_bias_gelu_under_swiglu():
    line = fused_kernel_status(768, torch.bfloat16, have_triton=True, cuda=True, rms=True,
                               swiglu=True)  # fmt: skip
    assert line == (
        "SEDD fused kernels (Triton on CUDA): active: RMSNorm+adaLN, gated residual+dropout, "
        "score entropy"
    )


def test_status_wide_hidden_falls_back_for_adaln_only():
    assert fused_kernel_status(8192, torch.bfloat16, have_triton=True, cuda=True).endswith(
        f"active: {ALL_OPS}"
    )
    line = fused_kernel_status(10240, torch.bfloat16, have_triton=True, cuda=True)
    assert line == (
        "SEDD fused kernels (Triton on CUDA): active: gated residual+dropout, bias+GELU, "
        "score entropy; LayerNorm+adaLN falls back to the torch reference: hidden size 10240 > "
        "MAX_FUSED_HIDDEN 8192"
    )


NONE = "SEDD fused kernels: none active, torch references everywhere: "


def test_status_fallback_reasons(monkeypatch):
    def status(**kwargs):
        args = {"hidden_size": 1024, "dtype": torch.bfloat16, "have_triton": True, "cuda": True}
        return fused_kernel_status(**{**args, **kwargs})

    assert status(enabled=False) == NONE + (
        "turned off by --no-sedd-fused-kernels (fused_kernels=False)"
    )
    assert status(have_triton=False) == NONE + "triton is not installed"
    assert status(dtype=torch.float64) == NONE + (
        "float64 activations (the kernels compute in fp32)"
    )
    monkeypatch.delenv("SEDD_TRITON_ON_CPU")
    assert status(cuda=False) == NONE + "no CUDA device (CPU without SEDD_TRITON_ON_CPU=1)"
    monkeypatch.setenv("SEDD_TRITON_ON_CPU", "1")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert status(cuda=False) == NONE + (
        "no CUDA device, and SEDD_TRITON_ON_CPU=1 needs Triton's interpreter "
        "(TRITON_INTERPRET=1 before triton is imported)"
    )


@pytest.mark.usefixtures("triton_interpreter")
def test_status_cpu_interpreter():
    line = fused_kernel_status(64, torch.float32, cuda=False)
    where = "Triton's CPU interpreter, slow: tests only"
    assert line == f"SEDD fused kernels ({where}): active: {ALL_OPS}"


def test_status_of_config_reads_the_activation_dtype():
    def config(**kwargs):
        fields = {"hidden_size": 1024, "params_dtype": torch.float32, "fused_kernels": True}
        return SimpleNamespace(**{**fields, **kwargs})

    assert fused_kernel_status_of(config(params_dtype=torch.float64)) == fused_kernel_status(
        1024, torch.float64
    )
    assert "float64" in fused_kernel_status_of(config(params_dtype=torch.float64))
    assert fused_kernel_status_of(config(bf16=True, fused_kernels=False)) == NONE + (
        "turned off by --no-sedd-fused-kernels (fused_kernels=False)"
    )
    assert fused_kernel_status_of(config(fp16=True, hidden_size=9000)) == fused_kernel_status(
        9000, torch.float16
    )


def test_model_provider_prints_the_status_once_on_rank_0(monkeypatch, capsys):
    from sedd_megatron.training import step

    assert "report_fused_kernels(config)" in inspect.getsource(step.model_provider)
    config = SimpleNamespace(hidden_size=64, params_dtype=torch.float64, fused_kernels=True)
    monkeypatch.setattr(step, "_FUSED_STATUS_PRINTED", False)
    step.report_fused_kernels(config)
    step.report_fused_kernels(config)
    assert capsys.readouterr().out == fused_kernel_status_of(config) + "\n"

    monkeypatch.setattr(step, "_FUSED_STATUS_PRINTED", False)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    step.report_fused_kernels(config)
    assert capsys.readouterr().out == ""
