"""Every fused Triton kernel compiles to a cubin for an H100 / H200 (sm_90), without spills.

The other kernel tests run the kernels in Triton's interpreter, which never compiles them, so
code that cannot be lowered for a real GPU would pass there. This module compiles each kernel
ahead of time for ``GPUTarget("cuda", 90, 32)`` (no GPU needed: Triton's bundled ptxas) exactly
as its launcher launches it at the SEDD model sizes and larger ones: hidden 768 / 1024 (SEDD
small / medium), 1280, 5120, 6144 and 8192 (adaLN's widest fused row, ``MAX_FUSED_HIDDEN``),
MLP width 4 x hidden, vocabulary shard 50304 / 25152 columns; the layer kernels with bf16, fp16
and fp32 activations, and at micro-batch 1 (the backward grids' short row chunks). The
launchers themselves run, on CPU tensors of those widths (allocated, never written: only their
shapes, strides and dtypes matter), with their kernels replaced by recorders, so the argument
dtypes (activations, fp32 statistics and partial sums, int64 token columns and seed), the int
specialisations (value 1, divisibility by 16), the constexpr flags, the block sizes and the
num_warps compiled here are the ones the launchers pick. Each recorded launch is specialised by
Triton's own argument binder, as ``JITFunction.run`` does, and compiled with ``triton.compile``
(in memory, into a private cache directory); the test asserts a cubin for sm_90a, shared memory
within the 227 KiB an sm_90 block can have and, from ptxas's ``-v`` report, no register spills.

Why a subprocess: ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before triton is imported,
and then triton's own library functions (``tl.sum``, ``tl.rand``...) are interpreter objects
and ``knobs.runtime.interpret`` changes how constexprs behave, so ``triton.compile`` fails in
this process (``CompilationError`` at the first ``tl.sum`` / ``tl.program_id(1) * BLOCK``).
The compiles therefore run in one fresh interpreter (this file run as a script) whose
environment lacks ``TRITON_INTERPRET``; the tests read its JSON report.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

from sedd_megatron.kernels.adaln import MAX_FUSED_HIDDEN

REPO = Path(__file__).resolve().parents[2]
KERNELS_DIR = REPO / "sedd_megatron" / "kernels"
TARGET = ("cuda", 90, 32)  # H100 / H200
MAX_SHARED_BYTES = 227 * 1024  # the most shared memory one sm_90 block may use
WORKER_TIMEOUT_S = 300

# Launch shapes: the widths are the SEDD model sizes; sequence x batch only sets the row counts
# (chunking of the backward reductions), kept small because the tensors are real CPU tensors.
SEQ, BATCH = 256, 16
# micro-batch 1, sequence 1024: the backward grids take short row chunks (dispatch.MIN_PROGRAMS)
SHORT_CHUNKS = {"seq": 1024, "batch": 1}
HIDDEN_SIZES = (768, 1024, 1280, 5120, 6144, MAX_FUSED_HIDDEN)
MLP_WIDTHS = tuple(4 * hidden for hidden in HIDDEN_SIZES)
LAYER_DTYPES = ("bf16", "fp16", "fp32")  # the layer kernels' activation dtypes
NUM_TOKENS = 50257  # GPT-2; the absorbing graph adds the MASK token (id NUM_TOKENS)
# (columns of this rank's vocabulary shard, TP size, TP rank): the full padded vocabulary, and
# the last rank of two, whose shard ends in padding
VOCAB_SHARDS = ((50304, 1, 0), (25152, 2, 1))
DROPOUT_P = 0.1  # SEDD's hidden dropout


def _case(module, case_id, op, params, flags):
    """One launcher call; ``flags`` maps each kernel it launches to the constexpr flags that
    launch must carry."""
    return {
        "id": f"{module}-{case_id}",
        "module": module,
        "op": op,
        "params": params,
        "kernels": list(flags),
        "flags": flags,
    }


def _cases() -> list[dict]:
    cases = []
    # adaLN up to the widest row its launcher fuses (one row per program: the most registers),
    # with LayerNorm and with RMSNorm
    for hidden, dtype, rms in itertools.product(HIDDEN_SIZES, LAYER_DTYPES, (False, True)):
        flags = {"RMS": rms}
        cases.append(
            _case(
                "adaln",
                f"H{hidden}-{dtype}{'-rms' if rms else ''}",
                "adaln",
                {"hidden": hidden, "dtype": dtype, "rms": rms},
                {"_ln_modulate_fwd": flags, "_ln_modulate_bwd": flags},
            )
        )
    for hidden, dtype in itertools.product(HIDDEN_SIZES, LAYER_DTYPES):
        for bias in (True, False):
            for dropout in (True, False):
                flags = {"HAS_BIAS": bias, "DROPOUT": dropout}
                name = f"H{hidden}-{dtype}-{'bias' if bias else 'nobias'}-"
                name += "dropout" if dropout else "nodropout"
                cases.append(
                    _case(
                        "residual",
                        name,
                        "residual",
                        {"hidden": hidden, "bias": bias, "dropout": dropout, "dtype": dtype},
                        {"_gated_residual_fwd": flags, "_gated_residual_bwd": flags},
                    )
                )
    for width, dtype in itertools.product(MLP_WIDTHS, LAYER_DTYPES):
        for bias in (True, False):
            flags = {"HAS_BIAS": bias}
            cases.append(
                _case(
                    "gelu",
                    f"F{width}-{dtype}-{'bias' if bias else 'nobias'}",
                    "gelu",
                    {"width": width, "bias": bias, "dtype": dtype},
                    {"_bias_gelu_fwd": flags, "_bias_gelu_bwd": flags},
                )
            )
    # shift: None (no sigma scaling), "data" (the model's scale_by_sigma shift, no gradient) or
    # "grad" (a shift that needs its gradient: WANT_SHIFT_GRAD)
    variants = [
        (v, tp, rank, g, s, "bf16")
        for v, tp, rank in VOCAB_SHARDS
        for g in ("absorb", "uniform")
        for s in (None, "data", "grad")
    ]
    variants += [(50304, 1, 0, g, "data", "fp32") for g in ("absorb", "uniform")]
    for vocab, tp, rank, graph, shift, dtype in variants:
        fwd = {"HAS_SHIFT": shift is not None, "UNIFORM": graph == "uniform"}
        bwd = dict(fwd, WANT_SHIFT_GRAD=shift == "grad")
        cases.append(
            _case(
                "score_entropy_stats",
                f"V{vocab}-tp{tp}rank{rank}-{graph}-shift_{shift or 'none'}-{dtype}",
                "score_entropy",
                {
                    "vocab": vocab,
                    "tp": tp,
                    "rank": rank,
                    "graph": graph,
                    "shift": shift,
                    "dtype": dtype,
                },
                {"_score_entropy_fwd": fwd, "_score_entropy_bwd": bwd},
            )
        )
    # the sampler's step: one launch of each kernel per case; its block is fixed (1024 columns)
    for (vocab, tp, rank), dtype in itertools.product(VOCAB_SHARDS, ("bf16", "fp32")):
        cases.append(
            _case(
                "sampling_step",
                f"V{vocab}-tp{tp}rank{rank}-{dtype}",
                "sampling_step",
                {"vocab": vocab, "tp": tp, "rank": rank, "dtype": dtype},
                {
                    "_keyed_uniforms": {"BLOCK": 1024},
                    "_score_sums": {"BLOCK": 1024},
                    "_race_rows": {"BLOCK": 1024},
                },
            )
        )
    # the short-chunk grids of micro-batch 1 (rows per chunk not a multiple of 16), bf16
    for hidden in (HIDDEN_SIZES[0], MAX_FUSED_HIDDEN):
        cases += [
            _case(
                "adaln",
                f"H{hidden}-bf16-mb1{'-rms' if rms else ''}",
                "adaln",
                {"hidden": hidden, "dtype": "bf16", "rms": rms, **SHORT_CHUNKS},
                {"_ln_modulate_fwd": {"RMS": rms}, "_ln_modulate_bwd": {"RMS": rms}},
            )
            for rms in (False, True)
        ]
        cases += [
            _case(
                "residual",
                f"H{hidden}-bf16-bias-dropout-mb1",
                "residual",
                {"hidden": hidden, "bias": True, "dropout": True, "dtype": "bf16", **SHORT_CHUNKS},
                {
                    "_gated_residual_fwd": {"HAS_BIAS": True, "DROPOUT": True},
                    "_gated_residual_bwd": {"HAS_BIAS": True, "DROPOUT": True},
                },
            ),
            _case(
                "gelu",
                f"F{4 * hidden}-bf16-bias-mb1",
                "gelu",
                {"width": 4 * hidden, "bias": True, "dtype": "bf16", **SHORT_CHUNKS},
                {"_bias_gelu_fwd": {"HAS_BIAS": True}, "_bias_gelu_bwd": {"HAS_BIAS": True}},
            ),
        ]
    return cases


CASES = _cases()
PARAMS = [
    pytest.param(case, kernel, id=f"{case['module']}.{kernel}-{case['id'].split('-', 1)[1]}")
    for case in CASES
    for kernel in case["kernels"]
]


def _backend_unavailable() -> str | None:
    """Why kernels cannot be compiled for sm_90 here, or None when they can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed: no kernels to compile"
    try:
        from triton import knobs
        from triton.backends import backends
    except ImportError as exc:  # pragma: no cover - other triton layouts
        return f"this triton has no backend registry ({exc})"
    if "nvidia" not in backends:
        return "triton's CUDA (nvidia) backend is not available"
    try:
        knobs.nvidia.ptxas  # noqa: B018 - resolving the knob finds and runs ptxas --version
    except Exception as exc:  # any failure means no usable ptxas
        return f"triton's bundled ptxas is not usable: {exc}"
    return None


_UNAVAILABLE = None if __name__ == "__main__" else _backend_unavailable()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE))


# --------------------------------------------------------------------------------------------
# The tests (in the pytest process)


def _kernel_functions(tree: ast.Module) -> set[str]:
    """Names of the Triton kernels a module defines: functions passed to ``jitted(...)``,
    decorated with ``*.jit``, or taking a ``tl.constexpr`` parameter."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if getattr(func, "id", getattr(func, "attr", None)) == "jitted":
                assert not any(isinstance(a, ast.Starred) for a in node.args), "jitted(*...)"
                names |= {a.id for a in node.args[1:] if isinstance(a, ast.Name)}
        if isinstance(node, ast.FunctionDef):
            decorators = [ast.unparse(d) for d in node.decorator_list]
            params = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            annotations = [ast.unparse(a.annotation) for a in params if a.annotation]
            if any(re.search(r"\bjit\b", d) for d in decorators) or any(
                a.endswith("constexpr") for a in annotations
            ):
                names.add(node.name)
    return names


def test_every_kernel_is_covered():
    """The cases below launch every Triton kernel of sedd_megatron/kernels (a new kernel needs
    a case here)."""
    found = set()
    for path in sorted(KERNELS_DIR.glob("*.py")):
        found |= {f"{path.stem}.{name}" for name in _kernel_functions(ast.parse(path.read_text()))}
    covered = {f"{case['module']}.{kernel}" for case in CASES for kernel in case["kernels"]}
    assert found, "no Triton kernels found in sedd_megatron/kernels"
    assert found == covered, (
        f"kernels without a compile case: {sorted(found - covered)}; "
        f"cases for unknown kernels: {sorted(covered - found)}"
    )


@pytest.fixture(scope="module")
def compiled(request, tmp_path_factory) -> dict:
    """Runs the compile worker once for the cases of the selected tests; its JSON report."""
    here = Path(__file__).resolve()
    wanted, seen = [], set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or Path(str(item.path)).resolve() != here:
            continue
        case = callspec.params.get("case")
        if case is not None and case["id"] not in seen:
            seen.add(case["id"])
            wanted.append(case)
    tmp = tmp_path_factory.mktemp("gpu_compile")
    cases_path, report_path = tmp / "cases.json", tmp / "report.json"
    cases_path.write_text(json.dumps(wanted or CASES))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "triton_cache")  # a fresh cache: every kernel compiles
    env["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas -v report (registers, spills) on stdout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, str(here), str(cases_path), str(report_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    if proc.returncode != 0 or not report_path.exists():
        pytest.fail(
            f"the compile worker failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    return json.loads(report_path.read_text())


@pytest.mark.parametrize(("case", "kernel"), PARAMS)
def test_compiles_for_sm90(compiled, case, kernel):
    label = f"{case['module']}.{kernel} [{case['id']}]"
    result = compiled.get(case["id"])
    assert result is not None, f"{label}: the compile worker did not run this case"
    assert result["error"] is None, f"{label}: running the launcher failed:\n{result['error']}"
    launches = [launch for launch in result["launches"] if launch["kernel"] == kernel]
    assert len(launches) == 1, f"{label}: launched {len(launches)} times, expected once"
    launch = launches[0]
    variant = ", ".join(f"{k}={v}" for k, v in launch["constexprs"].items())
    label += f" ({variant}, num_warps={launch['launch_num_warps']})"
    for flag, value in case["flags"][kernel].items():
        assert launch["constexprs"].get(flag) == value, f"{label}: expected {flag}={value}"

    assert (
        launch["compile_error"] is None
    ), f"{label} does not compile for sm_90:\n{launch['compile_error']}\n{launch['log']}"
    assert launch["elf"] and launch["cubin_bytes"] > 0, f"{label}: no cubin"
    assert launch["ptx_target"] == "sm_90a", f"{label}: PTX for {launch['ptx_target']}"
    assert launch["num_warps"] == launch["launch_num_warps"], (
        f"{label}: compiled with {launch['num_warps']} warps, launched with "
        f"{launch['launch_num_warps']}"
    )
    assert (
        launch["shared"] <= MAX_SHARED_BYTES
    ), f"{label}: {launch['shared']} bytes of shared memory (sm_90 max {MAX_SHARED_BYTES})"
    ptxas = launch["ptxas"]
    if ptxas is not None:  # ptxas -v reported on this kernel
        assert ptxas["spill_stores"] == 0 and ptxas["spill_loads"] == 0, (
            f"{label} spills registers: {ptxas['spill_stores']} bytes spill stores, "
            f"{ptxas['spill_loads']} bytes spill loads, {ptxas['registers']} registers, "
            f"{ptxas['stack']} bytes stack frame"
        )


# --------------------------------------------------------------------------------------------
# The compile worker (this file run as a script, without TRITON_INTERPRET)


def _dtype(torch, name):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _leaf(torch, dtype, *shape):
    """An uninitialised leaf: the launchers read only its shape, strides and dtype, and
    memory that is never written costs nothing at the widest MLP."""
    return torch.empty(*shape, dtype=_dtype(torch, dtype), requires_grad=True)


def _run_adaln(torch, module, hidden, dtype, rms, seq=SEQ, batch=BATCH):
    x = _leaf(torch, dtype, seq, batch, hidden)
    weight = _leaf(torch, dtype, hidden)
    # shift and scale are column slices of the [b, 6H] adaLN projection, as in the model
    modulation = _leaf(torch, dtype, batch, 6 * hidden)
    shift, scale = modulation[:, :hidden], modulation[:, hidden : 2 * hidden]
    y = module.layer_norm_modulate(x, weight, shift, scale, 1e-6, rms=rms)
    y.backward(torch.empty_like(y))


def _run_residual(torch, module, hidden, bias, dropout, dtype, seq=SEQ, batch=BATCH):
    def leaf(*shape):
        return _leaf(torch, dtype, *shape)

    branch, residual = leaf(seq, batch, hidden), leaf(seq, batch, hidden)
    gate = leaf(batch, 6 * hidden)[:, 2 * hidden : 3 * hidden]
    out = module.gated_residual(
        branch, leaf(hidden) if bias else None, gate, residual, DROPOUT_P if dropout else 0.0
    )
    out.backward(torch.empty_like(out))


def _run_gelu(torch, module, width, bias, dtype, seq=SEQ, batch=BATCH):
    x = _leaf(torch, dtype, seq, batch, width)
    y = module.bias_gelu(x, _leaf(torch, dtype, width) if bias else None)
    y.backward(torch.empty_like(y))


def _run_score_entropy(torch, module, vocab, tp, rank, graph, shift, dtype):
    seq, batch = 64, 4
    vocab_rows = NUM_TOKENS + 1 if graph == "absorb" else NUM_TOKENS
    start = vocab * rank  # sedd_model.vocab_range
    num_valid = max(start, min(start + vocab, vocab_rows)) - start
    mask_local = NUM_TOKENS - start if graph == "absorb" else None
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    logits = torch.zeros(seq, batch, vocab, dtype=dtype, requires_grad=True)
    shift_rows = None
    if shift is not None:  # the model's [b] shift, expanded to rows like the model does
        per_batch = torch.zeros(batch, requires_grad=shift == "grad")
        shift_rows = per_batch[None, :].expand(seq, batch).reshape(-1)
    tokens = torch.zeros(seq * batch, dtype=torch.int64)
    out = module.score_entropy_stats_triton(
        logits, shift_rows, tokens - start, tokens - start, num_valid, mask_local
    )
    torch.autograd.backward(out, [torch.zeros_like(t) for t in out])


def _run_sampling_step(torch, module, vocab, tp, rank, dtype):
    """The fused sampler step on this rank's shard of the absorb vocabulary (the last rank's
    shard ends in padding), as sedd_megatron.sampling.step launches it."""
    seq, batch = 64, 4
    rows = seq * batch
    vocab_rows = NUM_TOKENS + 1
    start = vocab * rank
    num_valid = max(start, min(start + vocab, vocab_rows)) - start
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    scores = torch.zeros(batch, seq, vocab, dtype=dtype)
    active = torch.ones(rows, dtype=torch.bool)
    keys = torch.zeros(rows, dtype=torch.int64)
    module.keyed_uniforms_triton(keys, start, start + num_valid)
    module.score_sums_triton(scores, num_valid, NUM_TOKENS - start, active)
    coefficients = torch.zeros(rows, 6, dtype=torch.float64)
    special = torch.full((rows,), NUM_TOKENS, dtype=torch.int64)
    module.race_triton(scores, start, num_valid, keys, coefficients, special, active)


_RUNNERS = {
    "adaln": _run_adaln,
    "residual": _run_residual,
    "gelu": _run_gelu,
    "score_entropy": _run_score_entropy,
    "sampling_step": _run_sampling_step,
}


def _record_launches(case, torch, JITFunction) -> list:
    """Runs the case's launcher with the module's kernels replaced by recorders; returns
    ``[(jit_function, args, kwargs)]`` per launch."""
    import importlib

    module = importlib.import_module(f"sedd_megatron.kernels.{case['module']}")
    real = module._kernels()
    for fn in real:
        if not isinstance(fn, JITFunction):
            raise TypeError(f"{case['module']}._kernels() gave {type(fn).__name__}, not JIT")
    launches = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.fn, args, kwargs))

    saved = module._kernels, module.triton_usable
    module._kernels = lambda: tuple(Recorder(fn) for fn in real)
    module.triton_usable = lambda *tensors: True
    try:
        _RUNNERS[case["op"]](torch, module, **case["params"])
    finally:
        module._kernels, module.triton_usable = saved
        # the runner's tensors sit in reference cycles (autograd): free them before the next
        # case, or the widest cases' gradients add up to gigabytes
        gc.collect()
    return launches


_PTXAS_SPILLS = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


def _compile_launch(fn, args, kwargs, target, backend, cache) -> dict:
    """Specialises one recorded launch as ``JITFunction.run`` does and compiles it."""
    import triton
    from triton import knobs
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    names = fn.arg_names
    info = {
        "kernel": fn.__name__,
        "launch_num_warps": kwargs.get("num_warps"),
        "constexprs": {names[k[0]]: v for k, v in sorted(constexprs.items())},
        "signature": {k: v for k, v in signature.items() if v != "constexpr"},
        "divisible_by_16": [names[k[0]] for k, v in sorted(attrs.items()) if v],
    }
    key = repr((fn.__name__, signature, sorted(constexprs.items()), sorted(attrs.items())))
    key += repr(sorted(options.__dict__.items()))
    if key not in cache:
        log = io.StringIO()
        start = time.perf_counter()
        result = {"compile_error": None, "log": ""}
        try:
            with contextlib.redirect_stdout(log):
                kernel = triton.compile(
                    ASTSource(fn, signature, constexprs, attrs),
                    target=target,
                    options=options.__dict__,
                )
        except Exception as exc:  # reported to the test
            result["compile_error"] = f"{type(exc).__name__}: {exc}"[-6000:]
            result["log"] = log.getvalue()[-3000:]
        else:
            cubin, ptx = kernel.asm["cubin"], kernel.asm["ptx"]
            ptx_target = re.search(r"^\s*\.target\s+([\w]+)", ptx, re.MULTILINE)
            spills = _PTXAS_SPILLS.search(log.getvalue())
            regs = _PTXAS_REGS.search(log.getvalue())
            result.update(
                cubin_bytes=len(cubin),
                elf=cubin[:4] == b"\x7fELF",
                ptx_target=ptx_target.group(1) if ptx_target else None,
                num_warps=kernel.metadata.num_warps,
                shared=kernel.metadata.shared,
                ptxas=(
                    {
                        "stack": int(spills.group(1)),
                        "spill_stores": int(spills.group(2)),
                        "spill_loads": int(spills.group(3)),
                        "registers": int(regs.group(1)) if regs else None,
                    }
                    if spills
                    else None
                ),
            )
        result["seconds"] = round(time.perf_counter() - start, 3)
        cache[key] = result
    return dict(info, **cache[key])


def _worker(cases_path: str, report_path: str) -> None:
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction

    target = GPUTarget(*TARGET)
    backend = make_backend(target)
    cache: dict = {}
    report = {}
    for case in json.loads(Path(cases_path).read_text()):
        try:
            launches = _record_launches(case, torch, JITFunction)
            report[case["id"]] = {
                "error": None,
                "launches": [
                    _compile_launch(*launch, target, backend, cache) for launch in launches
                ],
            }
        except Exception:  # reported to the test
            report[case["id"]] = {"error": traceback.format_exc()[-6000:], "launches": []}
    Path(report_path).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("the compile worker must run without TRITON_INTERPRET=1")
    _worker(*sys.argv[1:3])
