"""Reused scores for unchanged rows (``SamplingOptions.reuse_unchanged``) on CPU: NFE and time.

A time-independent absorbing model (``time_conditioning="none"``) of bench_sampling.py's
``small`` size (hidden 128, 4 layers, GPT-2 vocabulary; random weights: reference init +
N(0, 0.02^2)), the plain twin, batch 1, unconditional, the analytic predictor + denoiser. For
each step count, one sampler run with reuse off (a forward pass at every step) and one with it
on, in the same process, after a short warm-up; the samples must be identical (exact for this
model). Reported: NFE = rows run through the model (batch 1: forward passes), process CPU
seconds and wall seconds of the run, and the off/on ratios. The sampler's draw still runs at
every step, so the time saved is the forward passes' share only.

    python benchmarks/bench_cached_steps.py                      # length 1024, 128/1024/4096
    python benchmarks/bench_cached_steps.py --length 128 --steps 128 1024 4096
"""

import argparse
import os
import shlex
import sys
import time

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU benchmark, also on a machine with GPUs

import torch  # noqa: E402

from sedd_megatron.plain import SEDD, SEDDConfig  # noqa: E402
from sedd_megatron.sampling import PlainScoreModel, Sampler, SamplingOptions  # noqa: E402

SMALL = dict(hidden_size=128, n_blocks=4, n_heads=4, cond_dim=64, tokens=50257)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=1024, help="tokens per sample")
    parser.add_argument("--steps", nargs="+", type=int, default=[128, 1024, 4096])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_model(length: int) -> PlainScoreModel:
    torch.manual_seed(0)
    config = SEDDConfig(
        graph="absorb", length=length, time_conditioning="none", dropout=0.0, **SMALL
    )
    model = SEDD(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return PlainScoreModel(model.eval(), seq_length=length)


def run(model, steps: int, reuse: bool, seed: int) -> dict:
    sampler = Sampler(model, SamplingOptions(steps=steps, reuse_unchanged=reuse))
    cpu, wall = time.process_time(), time.perf_counter()
    x = sampler.sample(None, [0], seed)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"x": x, "nfe": sampler.stats["rows_evaluated"], "cpu": cpu, "wall": wall}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = make_model(args.length)
    run(model, 4, False, args.seed)  # warm-up
    rows = []
    for steps in args.steps:
        off = run(model, steps, False, args.seed)
        on = run(model, steps, True, args.seed)
        same = torch.equal(off["x"], on["x"])
        rows.append((steps, off, on, same))
        print(f"  {steps} steps: off {off['wall']:.1f} s, on {on['wall']:.1f} s", file=sys.stderr)
    print(
        f"\nreused scores, time-independent absorb 'small' (random weights), plain twin, CPU, "
        f"{args.threads} thread(s), batch 1, length {args.length}, analytic + denoiser"
    )
    print(
        f"{'steps':>6}{'NFE off':>9}{'NFE on':>8}{'NFE x':>7}{'CPU off s':>11}{'CPU on s':>10}"
        f"{'CPU x':>7}{'wall off s':>12}{'wall on s':>11}{'wall x':>8}  same tokens"
    )
    for steps, off, on, same in rows:
        print(
            f"{steps:>6}{off['nfe']:>9}{on['nfe']:>8}{off['nfe'] / on['nfe']:>7.2f}"
            f"{off['cpu']:>11.1f}{on['cpu']:>10.1f}{off['cpu'] / on['cpu']:>7.2f}"
            f"{off['wall']:>12.1f}{on['wall']:>11.1f}{off['wall'] / on['wall']:>8.2f}  {same}"
        )
    print(
        "x: off / on. command: python benchmarks/bench_cached_steps.py " + shlex.join(sys.argv[1:])
    )


if __name__ == "__main__":
    main()
