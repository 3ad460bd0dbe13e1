"""The GPU check's driver (run it through ``benchmarks/gpu_check.sh``, which sets up the paths).

Runs each step of the user path as its own process under a time limit, keeps each step's log in
``OUT/logs/STEP.log``, reads the figure each step reports from its log, and prints one summary
table (also written to ``OUT/summary.json``). A failed step does not stop the others.

Steps:
- ``train-small`` / ``train-medium``: ``bench_gpu_training.py`` (bf16, local spec) at SEDD-small
  micro-batch 16 and SEDD-medium micro-batch 8, x 1024 tokens; ``train-small-unfused`` the same
  with ``--no-fused-kernels``; ``train-small-llama`` the modern backbone at SEDD-small's size
  (configs/sedd_small_llama_absorb.yaml: ``--backbone llama --layers 13``); with ``--baseline
  DIR`` also DIR's benchmark (another checkout, e.g. the previous commit), so every ratio is
  measured in the same run.
- ``pretrain``: ``pretrain_sedd.py --bf16`` (SEDD-small config, mock data, 30 iterations, a save).
- ``generate-128`` / ``generate-8``: ``generate_sedd.py`` from that checkpoint, 16 samples x 1024
  tokens, analytic predictor; seconds per sampler step = the wall-time difference / 120.
- ``eval``: ``eval_elbo_sedd.py`` from that checkpoint on 4 blocks of a small indexed dataset.
- ``export``: ``convert_checkpoint.py export --verify``.

    python benchmarks/gpu_check.py --out runs/gpu_check [--baseline ../base] [--step-timeout 150]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--hidden", "768", "--layers", "12", "--heads", "12", "--micro-batch", "16"]
SMALL += ["--warmup", "4", "--steps", "12"]
LLAMA = [*SMALL, "--backbone", "llama", "--layers", "13"]  # the later --layers wins
MEDIUM = ["--hidden", "1024", "--layers", "24", "--heads", "16", "--micro-batch", "8"]
MEDIUM += ["--warmup", "3", "--steps", "8"]
BENCH = ["benchmarks/bench_gpu_training.py", "--local-spec"]
GENERATE_STEPS = (128, 8)


@dataclass
class Step:
    name: str
    argv: list[str]
    cwd: Path = REPO
    result: str = "not run"
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)


def parse_bench(text: str) -> dict:
    """tokens/s, MFU and peak GB from ``bench_gpu_training.py``'s table row."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.split()[:3] == ["steps", "s/step", "tokens/s"]:
            cells = lines[i + 1].split()
            return {
                "s/step": float(cells[1]),
                "tokens/s": float(cells[2]),
                "MFU": float(cells[5].rstrip("%")) / 100,
                "peak GB": float(cells[-1]),
            }
    return {}


def parse_pretrain(text: str) -> dict:
    """The final training loss and tokens/s from pretrain_sedd.py's summary line."""
    match = re.search(r"SEDD training summary: (\{.*\})", text)
    if not match:
        return {}
    summary = json.loads(match.group(1))
    keys = ("final_train_loss", "tokens_per_second", "iterations")
    return {k: summary[k] for k in keys if summary.get(k) is not None}


def parse_eval(text: str) -> dict:
    match = re.search(r"ELBO: ([0-9.]+) nats/token", text)
    return {"nats/token": float(match.group(1))} if match else {}


def parse_export(text: str) -> dict:
    match = re.search(r"max relative difference of the log-scores ([0-9.eE+-]+)", text)
    return {"verify max rel diff": float(match.group(1))} if match else {}


PARSERS = {"train": parse_bench, "pretrain": parse_pretrain, "eval": parse_eval}
PARSERS["export"] = parse_export


def write_eval_data(prefix: Path, vocab: int = 50257, tokens: int = 4 * 1024 + 7) -> str:
    """A small Megatron indexed dataset of random token ids (no tokenizer needed)."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    ids = np.random.default_rng(0).integers(0, vocab, size=tokens, dtype=np.int64)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    builder.add_document(torch.from_numpy(ids), [tokens])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def plan(out: Path, baseline: Path | None) -> list[Step]:
    py = sys.executable
    bench = [py, *BENCH]
    steps = [
        Step("train-small", [*bench, *SMALL]),
        Step("train-small-unfused", [*bench, *SMALL, "--no-fused-kernels"]),
        Step("train-small-llama", [*bench, *LLAMA]),
        Step("train-medium", [*bench, *MEDIUM]),
    ]
    if baseline is not None:
        steps += [
            Step("train-small-baseline", [*bench, *SMALL], cwd=baseline),
            Step("train-medium-baseline", [*bench, *MEDIUM], cwd=baseline),
        ]
    ckpt = str(out / "ckpt")
    steps.append(
        Step(
            "pretrain",
            [py, "pretrain_sedd.py", "--config", "configs/sedd_small_absorb.yaml", "--mock-data",
             "--micro-batch-size", "16", "--global-batch-size", "16", "--train-iters", "30",
             "--lr-warmup-iters", "5", "--log-interval", "10", "--eval-interval", "30",
             "--eval-iters", "1", "--save-interval", "30", "--save", ckpt],
        )  # fmt: skip
    )
    for n in GENERATE_STEPS:
        steps.append(
            Step(
                f"generate-{n}",
                [py, "tools/generate_sedd.py", "--load", ckpt, "--num-samples", "16",
                 "--batch-size", "16", "--steps", str(n), "--no-detokenize", "--no-progress",
                 "--output", str(out / f"samples-{n}.jsonl")],
            )  # fmt: skip
        )
    steps.append(
        Step(
            "eval",
            [py, "tools/eval_elbo_sedd.py", "--load", ckpt, "--data", str(out / "eval_data"),
             "--blocks", "4", "--num-t-samples", "64", "--batch-size", "16", "--no-progress",
             "--output", str(out / "elbo.json")],
        )  # fmt: skip
    )
    steps.append(
        Step(
            "export",
            [py, "tools/convert_checkpoint.py", "export", "--load", ckpt, "--out",
             str(out / "export"), "--verify"],
        )  # fmt: skip
    )
    return steps


def run_step(step: Step, logs: Path, timeout: float) -> None:
    # The step's own checkout first; this checkout never shadows a baseline's package.
    others = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    others = [p for p in others if p and Path(p).resolve() != REPO]
    env = dict(
        os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(step.cwd), *others])
    )
    log = logs / f"{step.name}.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            code = subprocess.run(
                step.argv, cwd=step.cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode  # fmt: skip
            step.result = "ok" if code == 0 else f"exit {code}"
        except subprocess.TimeoutExpired:
            step.result = f"timeout {timeout:.0f} s"
    step.seconds = time.perf_counter() - start
    parser = PARSERS.get(step.name.split("-")[0])
    step.figures = parser(log.read_text(errors="replace")) if parser else {}
    print(f"gpu_check: {step.name}: {step.result} ({step.seconds:.0f} s, {log})", flush=True)


def derived(steps: dict[str, Step]) -> dict:
    """Ratios measured in this run: fused vs unfused and vs the baseline checkout; s/step."""
    out = {}

    def tokens(name):
        step = steps.get(name)
        return step.figures.get("tokens/s") if step and step.result == "ok" else None

    for a, b, label in [
        ("train-small", "train-small-unfused", "small: fused / unfused tokens/s"),
        ("train-small-llama", "train-small", "small: llama backbone / DiT tokens/s"),
        ("train-small", "train-small-baseline", "small: this / baseline tokens/s"),
        ("train-medium", "train-medium-baseline", "medium: this / baseline tokens/s"),
    ]:
        if tokens(a) and tokens(b):
            out[label] = tokens(a) / tokens(b)
    runs = [steps.get(f"generate-{n}") for n in GENERATE_STEPS]
    if all(r is not None and r.result == "ok" for r in runs):
        long, short = runs
        per_step = (long.seconds - short.seconds) / (GENERATE_STEPS[0] - GENERATE_STEPS[1])
        out["generate: s/step (16 x 1024, analytic)"] = per_step
        out["generate: steps/s"] = 1 / per_step if per_step > 0 else None
    return out


def summary_table(steps: list[Step], ratios: dict) -> str:
    lines = [f"{'step':<22} {'result':<14} {'seconds':>8}  figures"]
    for step in steps:
        figures = ", ".join(f"{k} {_fmt(v)}" for k, v in step.figures.items())
        lines.append(f"{step.name:<22} {step.result:<14} {step.seconds:>8.1f}  {figures}")
    lines += [f"{k}: {_fmt(v)}" for k, v in ratios.items()]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check")
    parser.add_argument("--baseline", type=Path, help="another checkout to benchmark alongside")
    parser.add_argument("--step-timeout", type=float, default=150.0)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): skipped.")
        return 0
    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    write_eval_data(out / "eval_data")
    baseline = args.baseline.resolve() if args.baseline else None
    steps = plan(out, baseline)
    for step in steps:
        run_step(step, logs, args.step_timeout)
    ratios = derived({s.name: s for s in steps})
    table = summary_table(steps, ratios)
    print(f"\n=== GPU check: {torch.cuda.get_device_name()}, torch {torch.__version__} ===")
    print(table)
    record = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "steps": [
            {"name": s.name, "result": s.result, "seconds": s.seconds, **s.figures} for s in steps
        ],
        "ratios": ratios,
    }
    (out / "summary.json").write_text(json.dumps(record, indent=2))
    return 0 if all(s.result == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
