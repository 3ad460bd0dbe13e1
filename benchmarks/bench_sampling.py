"""Sampler throughput on CPU: SEDDModel (Megatron, TP = 1) vs the plain twin, float64 vs fp32.

What is measured: one full sampler run (``--steps`` analytic predictor steps + the denoiser, an
absorb model, unconditional) per repetition, after a warm-up run; the table reports steps/s =
draws / median process CPU time of a run, tokens/s = batch x sequence length x steps/s
(token positions updated per second), and "fwd" = the share of a step spent in the model's
forward pass (timed separately on a half-masked batch), the rest being the sampler's math and
random numbers. Variants, same weights:

- ``megatron``: SEDDModel in a one-rank gloo world (``load_sedd_model``), the default
  float64 layout-independent sampler (``sedd_megatron.sampling``).
- ``plain``: the plain twin, the same sampler.
- ``plain-fp32``: the plain twin with ``fp32_sampling`` (the reference's float32 draw from the
  global RNG over the full (B, L, V) tensor).

Configs: ``tiny`` = the conformance models' size (hidden 64, 2 layers, vocabulary 1000,
length 32); ``small`` = configs/sedd_tiny_cpu.yaml's size (hidden 128, 4 layers, GPT-2
vocabulary, length 128). Weights are random (reference init + N(0, 0.02^2)). One torch thread by
default: CPU time is then compute time even on a shared machine.

    python benchmarks/bench_sampling.py
    python benchmarks/bench_sampling.py --configs tiny --batches 1 8 --steps 8
"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU benchmark, also on a machine with GPUs

import torch  # noqa: E402

from sedd_megatron.checkpoint import load_sedd_model  # noqa: E402
from sedd_megatron.plain import SEDD, SEDDConfig  # noqa: E402
from sedd_megatron.runtime import world  # noqa: E402
from sedd_megatron.sampling import (  # noqa: E402
    MegatronScoreModel,
    PlainScoreModel,
    Sampler,
    SamplingOptions,
)

CONFIGS = {
    "tiny": dict(hidden_size=64, n_blocks=2, n_heads=4, cond_dim=32, tokens=1000, length=32),
    "small": dict(hidden_size=128, n_blocks=4, n_heads=4, cond_dim=64, tokens=50257, length=128),
}
VARIANTS = ("megatron", "plain", "plain-fp32")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=4, help="predictor steps per run")
    parser.add_argument("--reps", type=int, default=2, help="timed runs per variant")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def write_model(directory: str, config: dict) -> str:
    """A random absorb model in the published layout (perturbed so that it is not degenerate)."""
    torch.manual_seed(0)
    model = SEDD(SEDDConfig(graph="absorb", noise_type="loglinear", **config))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = os.path.join(directory, "model")
    model.save_pretrained(path)
    return path


def cpu_time(fn, reps: int) -> float:
    """Median process CPU seconds of ``fn()`` over ``reps`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(reps):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def measure(model, batch: int, args, fp32: bool) -> dict:
    sampler = Sampler(model, SamplingOptions(steps=args.steps, fp32_sampling=fp32))
    ids = list(range(batch))
    run = cpu_time(lambda: sampler.sample(None, ids, None if fp32 else 0), args.reps)
    draws = len(sampler.steps)
    x = torch.randint(0, model.graph.num_tokens, (batch, model.seq_length))
    x[:, ::2] = model.graph.mask_id
    sigma = torch.full((batch,), 1.0)
    forward = cpu_time(lambda: model.log_score(x, sigma), args.reps)
    steps_per_s = draws / run
    return {
        "steps/s": steps_per_s,
        "tokens/s": steps_per_s * batch * model.seq_length,
        "fwd": min(1.0, forward * draws / run),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with world(tp=1, pp=1, seed=0):
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.configs:
                path = write_model(os.path.join(tmp, name), CONFIGS[name])
                models = {
                    "megatron": MegatronScoreModel(*load_sedd_model(path)),
                    "plain": PlainScoreModel.from_pretrained(path),
                }
                models["plain-fp32"] = models["plain"]
                for batch in args.batches:
                    for variant in VARIANTS:
                        result = measure(models[variant], batch, args, variant == "plain-fp32")
                        rows.append((name, batch, variant, result))
                        done = f"  {name} batch {batch} {variant}: {result['steps/s']:.2f} steps/s"
                        print(done, file=sys.stderr, flush=True)
    print_table(rows, args)


def print_table(rows, args) -> None:
    by_key = {(n, b, v): r for n, b, v, r in rows}
    print(
        f"\nsampler throughput, CPU, {args.threads} thread(s), {args.steps} analytic steps + "
        "denoiser, absorb, median process CPU time"
    )
    header = f"{'config':<7}{'batch':>6}  {'variant':<11}{'steps/s':>9}{'tokens/s':>11}{'fwd':>6}"
    print(header + f"{'vs plain':>10}")
    for name, batch, variant, r in rows:
        ratio = r["steps/s"] / by_key[(name, batch, "plain")]["steps/s"]
        print(
            f"{name:<7}{batch:>6}  {variant:<11}{r['steps/s']:>9.2f}{r['tokens/s']:>11,.0f}"
            f"{r['fwd']:>6.0%}{ratio:>10.2f}"
        )
    print("vs plain: steps/s relative to the plain twin with the float64 sampler, same batch")
    print("command: python benchmarks/bench_sampling.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    main()
