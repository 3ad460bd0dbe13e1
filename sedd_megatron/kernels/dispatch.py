"""When the Triton kernels can run, and the launch-shape helpers they share.

The fused ops run their Triton kernels when ``triton_usable(*tensors)`` holds:

* triton is importable and every tensor is on a CUDA device (compiled kernels), or
* every tensor is on the CPU, ``SEDD_TRITON_ON_CPU=1`` asks for the kernels there, and
  ``TRITON_INTERPRET=1`` was set before the first ``import triton`` (Triton's interpreter: how
  the tests check the kernels on machines without a GPU; far too slow for anything else).

Otherwise the ops run their unfused torch reference, so this package imports and works without
triton. The layer and loss kernels compute in fp32, so they take float32 / bf16 / fp16 tensors
only (:func:`kernel_dtypes_ok`): float64 runs the reference, which keeps it.
:func:`fused_kernel_status` says in one line which of them a model configuration runs, and why
any fall back.

``triton.jit`` picks compiled or interpreted execution from ``TRITON_INTERPRET`` when it
decorates, so the kernels are decorated on first launch (:func:`jitted`, cached per mode), not
at import. Triton's own library functions (``tl.rand``) are decorated when triton is imported:
interpreting them needs ``TRITON_INTERPRET=1`` set before the first ``import triton``.
"""

from __future__ import annotations

import os

import torch

try:  # triton is optional: without it every op runs its torch reference
    import triton

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    HAVE_TRITON = False

# Backward reductions over the sequence run on a grid of (parallel programs x row chunks); the
# chunking aims at about TARGET_PROGRAMS programs (enough to fill an H100's / H200's 132 SMs a
# few times) and gives each program at least MIN_ROWS_PER_CHUNK rows, so the fp32 partial-sum
# buffers stay small next to the gradient itself; where that leaves fewer than MIN_PROGRAMS
# programs (micro-batch 1, short sequences), the chunks get fewer rows (down to one) until the
# grid has MIN_PROGRAMS programs, two per SM.
SM_COUNT = 132
TARGET_PROGRAMS = 1024
MIN_PROGRAMS = 2 * SM_COUNT
MIN_ROWS_PER_CHUNK = 16

# Activation dtypes the fp32-computing kernels take (float64 would be rounded to fp32).
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernels_on_cpu_requested() -> bool:
    """True when ``SEDD_TRITON_ON_CPU=1`` asks for the Triton kernels on CPU tensors."""
    return os.environ.get("SEDD_TRITON_ON_CPU") == "1"


def interpreter_ready() -> bool:
    """Whether triton's own library (``tl.sum``, ``tl.rand``) was decorated for the interpreter.

    False when triton was imported before ``TRITON_INTERPRET=1`` was set (megatron imports it):
    then interpreted kernels cannot call those functions.
    """
    if not HAVE_TRITON:
        return False
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - other triton layouts
        return True
    return isinstance(getattr(triton.language, "sum", None), InterpretedFunction)


def plain_dispatch():
    """The context of a fused op's host-side code: its argument checks (tensor metadata) and,
    where the kernels do not run, its unfused torch reference (arithmetic on the op's own
    tensors, which allocates nothing on a device of its choosing). Torch function modes and
    overrides are off inside, so that each attribute read and small op is a plain call: under
    the CPU shim's process-wide mode (``sedd_megatron.runtime.cpu``) each would be a Python
    dispatch, costing more than the op itself on small tensors."""
    return torch._C.DisableTorchFunction()


def triton_usable(*tensors: torch.Tensor | None) -> bool:
    """Whether the Triton kernels can run on these tensors (``None`` entries are ignored).

    True when every tensor is on CUDA, or when every tensor is on the CPU, the kernels are
    requested there (:func:`kernels_on_cpu_requested`) and Triton's interpreter can run them
    (:func:`interpreting` and :func:`interpreter_ready`).

    Called on every fused op: where CUDA was never initialised (so no tensor can be on it) and
    the kernels are not requested on the CPU, it answers without reading the tensors' devices,
    which under the CPU shim's torch function mode (``sedd_megatron.runtime.cpu``) costs a Python
    dispatch per attribute read.
    """
    if not HAVE_TRITON:
        return False
    present = [t for t in tensors if t is not None]
    if present and not torch.cuda.is_initialized() and not kernels_on_cpu_requested():
        return False  # no CUDA tensor exists yet: skip the attribute reads (see below)
    if all(t.is_cuda for t in present):
        return True
    on_cpu = all(t.device.type == "cpu" for t in present)
    return on_cpu and kernels_on_cpu_requested() and interpreting() and interpreter_ready()


def kernel_dtypes_ok(*tensors: torch.Tensor | None) -> bool:
    """Whether every floating-point tensor (``None`` ignored) is float32, bf16 or fp16.

    The layer kernels load their inputs in their own dtype and compute in fp32: a float64
    tensor would come back fp32-rounded, so the ops run their torch reference for it instead.
    """
    return all(t.dtype in KERNEL_DTYPES for t in tensors if t is not None and t.is_floating_point())


def jitted(cache: dict, *fns) -> tuple:
    """``fns`` decorated with ``triton.jit`` for the current mode (compiled or interpreted).

    ``cache`` (a module's own dict) keeps one tuple of kernels per mode.
    """
    mode = interpreting()
    if mode not in cache:
        cache[mode] = tuple(triton.jit(fn) for fn in fns)
    return cache[mode]


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ints."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (``triton.next_power_of_2``)."""
    return triton.next_power_of_2(n)


def num_warps_for(block: int, values_per_warp: int = 512) -> int:
    """Warps for a program holding ``block`` values per row: one per ``values_per_warp``
    values, 4 to 16 (register-heavy kernels pass a smaller ``values_per_warp``)."""
    return min(max(block // values_per_warp, 4), 16)


def row_chunks(n_rows: int, n_parallel: int) -> tuple[int, int]:
    """Split ``n_rows`` rows into ``(n_chunks, rows_per_chunk)`` for a reduction grid.

    ``n_parallel`` programs already run side by side for each chunk (batch entries, column
    blocks); the chunk count brings the total near ``TARGET_PROGRAMS`` with chunks of at least
    ``MIN_ROWS_PER_CHUNK`` rows, and up to ``MIN_PROGRAMS`` with shorter chunks where that is
    too few (when there are that many rows).
    """
    n_rows, n_parallel = max(n_rows, 1), max(n_parallel, 1)
    wanted = max(cdiv(TARGET_PROGRAMS, n_parallel), 1)
    n_chunks = min(wanted, cdiv(n_rows, MIN_ROWS_PER_CHUNK))
    if n_chunks * n_parallel < MIN_PROGRAMS:  # too few programs: shorter chunks, down to 1 row
        n_chunks = min(cdiv(MIN_PROGRAMS, n_parallel), n_rows)
    rows_per_chunk = cdiv(n_rows, n_chunks)
    return cdiv(n_rows, rows_per_chunk), rows_per_chunk


def rows_of(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim is unit-stride (rows may be strided), else a copy.

    Used for the small ``[b, H]`` modulation tensors, which are usually column slices of one
    ``[b, 6H]`` projection: the kernels take their row stride instead of copying them.
    """
    return t if t.stride(-1) == 1 else t.contiguous()


# The fused ops a SEDD model runs in training, as the start-up status line names them.
FUSED_OPS = ("LayerNorm+adaLN", "gated residual+dropout", "bias+GELU", "score entropy")


def fused_kernel_status(
    hidden_size: int,
    dtype: torch.dtype,
    enabled: bool = True,
    *,
    have_triton: bool | None = None,
    cuda: bool | None = None,
    rms: bool = False,
    swiglu: bool = False,
) -> str:
    """One line saying which fused kernels a model with this hidden size and activation dtype
    runs, and why any fall back to the torch references. ``rms``: the norm kernel runs its
    RMSNorm variant; ``swiglu``: the MLP is SwiGLU (Megatron's bias-SwiGLU, not bias+GELU).

    ``enabled``: the config's ``fused_kernels`` (``--no-sedd-fused-kernels`` turns it off);
    ``have_triton`` (default: whether triton imports) and ``cuda`` (default:
    ``torch.cuda.is_available()``) describe the machine. Without CUDA the kernels run only on
    Triton's CPU interpreter when asked (``SEDD_TRITON_ON_CPU=1`` and ``TRITON_INTERPRET=1``).
    """
    from .adaln import MAX_FUSED_HIDDEN  # lazy: adaln imports this module

    have_triton = HAVE_TRITON if have_triton is None else have_triton
    cuda = torch.cuda.is_available() if cuda is None else cuda
    off = None
    if not enabled:
        off = "turned off by --no-sedd-fused-kernels (fused_kernels=False)"
    elif not have_triton:
        off = "triton is not installed"
    elif dtype not in KERNEL_DTYPES:
        off = f"{str(dtype).removeprefix('torch.')} activations (the kernels compute in fp32)"
    elif not cuda and not kernels_on_cpu_requested():
        off = "no CUDA device (CPU without SEDD_TRITON_ON_CPU=1)"
    elif not cuda and not (interpreting() and interpreter_ready()):
        off = (
            "no CUDA device, and SEDD_TRITON_ON_CPU=1 needs Triton's interpreter "
            "(TRITON_INTERPRET=1 before triton is imported)"
        )
    if off is not None:
        return f"SEDD fused kernels: none active, torch references everywhere: {off}"
    where = "Triton on CUDA" if cuda else "Triton's CPU interpreter, slow: tests only"
    norm_op = "RMSNorm+adaLN" if rms else FUSED_OPS[0]
    ops = [norm_op, *(op for op in FUSED_OPS[1:] if not (swiglu and op == "bias+GELU"))]
    active = [op for op in ops if op != norm_op or hidden_size <= MAX_FUSED_HIDDEN]
    line = f"SEDD fused kernels ({where}): active: {', '.join(active)}"
    if hidden_size > MAX_FUSED_HIDDEN:
        line += (
            f"; {norm_op} falls back to the torch reference: hidden size {hidden_size} > "
            f"MAX_FUSED_HIDDEN {MAX_FUSED_HIDDEN}"
        )
    return line


def fused_kernel_status_of(config) -> str:
    """:func:`fused_kernel_status` for a transformer config: ``hidden_size``, ``fused_kernels``
    and the activation dtype (bf16 / fp16 when those flags are set, else ``params_dtype``)."""
    if getattr(config, "bf16", False):
        dtype = torch.bfloat16
    elif getattr(config, "fp16", False):
        dtype = torch.float16
    else:
        dtype = getattr(config, "params_dtype", torch.float32)
    return fused_kernel_status(
        config.hidden_size,
        dtype,
        getattr(config, "fused_kernels", True),
        rms=getattr(config, "normalization", "LayerNorm") == "RMSNorm",
        swiglu=bool(getattr(config, "gated_linear_unit", False)),
    )
