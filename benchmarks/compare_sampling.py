"""Sampler throughput of this tree against a baseline tree, measured in alternation.

Two worker processes, one per tree (``PYTHONPATH`` set to it), each build the models of
``bench_sampling.py`` (that tree's copy: same configs, same random weights) and time full
sampler runs (float64 sampler, seed 0, each after ``--warm-up`` untimed runs; process CPU
time, one torch thread by default). The controller asks them in turn, run by run: round after
round, every (config, batch, variant) is timed in one tree and then in the other (the order
swapped every round), so that noise from other processes on a shared machine hits both trees
alike. Columns: steps/s of each tree's fastest run, ``best`` = the ratio of those, ``paired`` =
the median over rounds of the ratio new/old of the round's two runs (> 1: the new tree is
faster).

    git worktree add /tmp/base 002497b
    python benchmarks/compare_sampling.py --baseline /tmp/base
    python benchmarks/compare_sampling.py --baseline /tmp/base --configs tiny --rounds 31

The baseline needs ``benchmarks/bench_sampling.py`` with ``CONFIGS`` and ``write_model``, and
``sedd_megatron.sampling`` with ``Sampler``, ``SamplingOptions``, ``MegatronScoreModel`` and
``PlainScoreModel`` (commit 002497b and later).
"""

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("megatron", "plain", "plain-fp32")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the baseline tree (a git worktree)")
    parser.add_argument("--new", default=os.path.dirname(HERE), help="default: this tree")
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["megatron", "plain"])
    parser.add_argument("--steps", type=int, default=4, help="predictor steps per run")
    parser.add_argument("--rounds", type=int, default=15, help="alternations per measurement")
    parser.add_argument("--reps", type=int, default=1, help="timed runs per tree and round")
    parser.add_argument(
        "--warm-up", type=int, default=1, help="untimed runs before each timed one (>= 1 at first)"
    )
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- worker side
def worker(tree: str, steps: int, threads: int) -> None:
    """Answer requests on stdin ({"config", "batch", "variant", "reps", "warm_up"}, one JSON
    per line) with {"times": CPU seconds of each timed run, "draws": draws per run} on stdout."""
    answers = os.fdopen(os.dup(1), "w")  # the protocol's channel; library prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.path.insert(0, tree)
    spec = importlib.util.spec_from_file_location(
        "tree_bench_sampling", os.path.join(tree, "benchmarks", "bench_sampling.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import torch  # lazy: the worker's torch comes with the tree's environment

    from sedd_megatron import runtime  # lazy: the tree is on sys.path only now
    from sedd_megatron.checkpoint import load_sedd_model  # lazy: as above
    from sedd_megatron.sampling import (  # lazy: as above
        MegatronScoreModel,
        PlainScoreModel,
        Sampler,
        SamplingOptions,
    )

    torch.set_num_threads(threads)
    runtime.init_distributed(tp=1, pp=1, seed=0)
    tmp = tempfile.TemporaryDirectory()
    models, samplers = {}, {}
    for line in sys.stdin:
        request = json.loads(line)
        name, batch, variant = request["config"], request["batch"], request["variant"]
        if name not in models:
            path = bench.write_model(os.path.join(tmp.name, name), bench.CONFIGS[name])
            plain = PlainScoreModel.from_pretrained(path)
            models[name] = {
                "megatron": MegatronScoreModel(*load_sedd_model(path)),
                "plain": plain,
                "plain-fp32": plain,
            }
        key = (name, batch, variant)
        fp32 = variant == "plain-fp32"
        if key not in samplers:
            options = SamplingOptions(steps=steps, fp32_sampling=fp32)
            samplers[key] = Sampler(models[name][variant], options)
        sampler, ids, seed = samplers[key], list(range(batch)), None if fp32 else 0
        for _ in range(request["warm_up"]):  # caches warm after the other measurements
            sampler.sample(None, ids, seed)
        times = []
        for _ in range(request["reps"]):
            start = time.process_time()
            sampler.sample(None, ids, seed)
            times.append(time.process_time() - start)
        print(json.dumps({"times": times, "draws": len(sampler.steps)}), file=answers, flush=True)
    tmp.cleanup()


# --------------------------------------------------------------------------- controller side
class Worker:
    def __init__(self, tree: str, args):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env.update(PYTHONPATH=tree, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
        env["OMP_NUM_THREADS"] = str(args.threads)
        self.log = tempfile.TemporaryFile(mode="w+")
        command = [sys.executable, os.path.abspath(__file__), "--worker", tree]
        command += ["--steps", str(args.steps), "--threads", str(args.threads)]
        self.tree = tree
        self.process = subprocess.Popen(
            command,
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def measure(self, name: str, batch: int, variant: str, reps: int, warm_up: int) -> float:
        """CPU seconds per draw of a run (the median of ``reps`` runs after ``warm_up``)."""
        request = {"config": name, "batch": batch, "variant": variant, "reps": reps}
        request["warm_up"] = warm_up
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.log.seek(0)
            tail = self.log.read()[-3000:]
            raise RuntimeError(f"the worker for {self.tree} died:\n{tail}")
        answer = json.loads(line)
        return statistics.median(answer["times"]) / answer["draws"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()
        self.log.close()


def main(argv=None) -> None:
    args = parse_args(argv)
    trees = {"old": os.path.abspath(args.baseline), "new": os.path.abspath(args.new)}
    workers = {side: Worker(tree, args) for side, tree in trees.items()}
    keys = [(c, b, v) for c in args.configs for b in args.batches for v in args.variants]
    seconds = {key: {"old": [], "new": []} for key in keys}
    try:
        for r in range(args.rounds):
            for key in keys:
                order = ("old", "new") if r % 2 == 0 else ("new", "old")
                for side in order:
                    warm_up = args.warm_up if r else max(args.warm_up, 1)  # first use: shapes
                    seconds[key][side].append(workers[side].measure(*key, args.reps, warm_up))
                old, new = seconds[key]["old"][-1], seconds[key]["new"][-1]
                print(f"  round {r + 1} {key}: new/old {old / new:.2f}", file=sys.stderr)
    finally:
        for w in workers.values():
            w.close()
    print_table(keys, seconds, trees, args)


def print_table(keys, seconds, trees, args) -> None:
    print(
        f"\nsampler steps/s, new ({trees['new']}) vs old ({trees['old']}); CPU, "
        f"{args.threads} thread(s), {args.steps} analytic steps + denoiser, absorb; "
        f"{args.rounds} alternating rounds x {args.reps} run(s)"
    )
    print(f"{'config':<7}{'batch':>6}  {'variant':<10}{'old':>9}{'new':>9}{'best':>7}{'paired':>8}")
    for key in keys:
        old, new = seconds[key]["old"], seconds[key]["new"]
        paired = statistics.median(o / n for o, n in zip(old, new, strict=True))
        name, batch, variant = key
        print(
            f"{name:<7}{batch:>6}  {variant:<10}{1 / min(old):>9.2f}{1 / min(new):>9.2f}"
            f"{min(old) / min(new):>7.2f}{paired:>8.2f}"
        )
    print("old, new: steps/s of the fastest run; best: new/old of those; paired: median over")
    print("rounds of new/old steps/s of the round's two runs")
    print("command: python benchmarks/compare_sampling.py " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker_args = argparse.ArgumentParser()
        worker_args.add_argument("tree")
        worker_args.add_argument("--steps", type=int)
        worker_args.add_argument("--threads", type=int)
        parsed = worker_args.parse_args(sys.argv[2:])
        worker(parsed.tree, parsed.steps, parsed.threads)
    else:
        main()
