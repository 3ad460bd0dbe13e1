"""Does our stack reproduce the paper's ordering? SEDD-absorb vs SEDD-uniform vs an AR baseline.

Trains three models of the same size on the same data for the same number of tokens, with the
same optimizer, schedule, EMA and seed, all through ``megatron.training.pretrain``:

- ``sedd-absorb``: pretrain_sedd.py, absorbing graph, log-linear noise (the paper's best);
- ``sedd-uniform``: pretrain_sedd.py, uniform graph, geometric noise (the paper's setting);
- ``ar``: benchmarks/pretrain_ar_baseline.py, Megatron's GPTModel of the same width, depth,
  heads, vocabulary and length.

Then scores PTB test on identical blocks (the ELBO harness's: GPT-2 BPE, EOS after every
sentence, packed blocks of the model's length): the perplexity bound of each SEDD model
(tools/eval_elbo_sedd.py, EMA weights, 95 % Monte-Carlo interval) and the exact perplexity of
the AR model (EMA weights). Writes ``results.json`` and two plots: validation loss against
training tokens, and the final perplexities with their intervals.

    python benchmarks/paper_ordering.py --out runs/paper_ordering           # CPU, 1-1.5 hours
    python benchmarks/paper_ordering.py --out runs/po_gpu --size gpu        # SEDD-small, a GPU
    python benchmarks/paper_ordering.py --out /tmp/po --size toy            # minutes (CI test)

A finished model is not retrained when the script runs again with the same settings (its
``result.json`` is kept); ``--force`` retrains everything.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sedd_megatron.console import exit_on_interrupt, quiet_third_party

exit_on_interrupt()  # Ctrl-C from here on: one line, exit status 130
quiet_third_party()  # before matplotlib/torch are imported; SEDD_SHOW_WARNINGS=1 shows all

from sedd_megatron.atomic import atomic_open

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_SEDD = REPO / "pretrain_sedd.py"
PRETRAIN_AR = REPO / "benchmarks" / "pretrain_ar_baseline.py"
EVAL_ELBO = REPO / "tools" / "eval_elbo_sedd.py"

#: name -> (entry point, the flags that select the model, as flag -> value)
MODELS = {
    "sedd-absorb": (PRETRAIN_SEDD, {"sedd-graph": "absorb", "sedd-noise": "loglinear"}),
    "sedd-uniform": (PRETRAIN_SEDD, {"sedd-graph": "uniform", "sedd-noise": "geometric"}),
    "ar": (PRETRAIN_AR, {}),
}

_TOY_MODEL = [
    "--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2",
    "--ffn-hidden-size", "128", "--seq-length", "32", "--max-position-embeddings", "32",
    "--sedd-cond-dim", "16", "--micro-batch-size", "2", "--global-batch-size", "2",
]  # fmt: skip

#: Run sizes. ``iters`` x global batch x length = training tokens per model.
SIZES = {
    "cpu": dict(config="configs/sedd_tiny_cpu.yaml", flags=[], iters=500, warmup=50,
                eval_interval=100, eval_iters=8, eval_blocks=128, t_samples=32, batch=16),
    "gpu": dict(config="configs/sedd_small_absorb.yaml",
                flags=["--micro-batch-size", "32", "--global-batch-size", "64"],
                iters=20000, warmup=1000, eval_interval=1000, eval_iters=10, eval_blocks=None,
                t_samples=128, batch=32),
    "toy": dict(config="configs/sedd_tiny_cpu.yaml", flags=_TOY_MODEL, iters=4, warmup=1,
                eval_interval=2, eval_iters=1, eval_blocks=2, t_samples=4, batch=4),
}  # fmt: skip

#: Published controlled comparisons (same data, model size and training steps): OpenWebText test
#: perplexity of GPT-2-small-sized models trained for 1M steps, as reported by MDLM (Sahoo et al.
#: 2024, Table 1: AR, retrained SEDD-absorb, MDLM) and Duo (Sahoo et al. 2025: SEDD-uniform).
#: Diffusion numbers are bounds.
PUBLISHED = {
    "source": "OpenWebText, GPT-2-small size, 1M steps (MDLM Table 1; Duo)",
    "ar": 17.54,
    "sedd-absorb": 24.10,
    "mdlm": 23.21,
    "sedd-uniform": 29.70,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "paper_ordering"))
    parser.add_argument("--size", choices=SIZES, default="cpu")
    parser.add_argument(
        "--corpus",
        default=None,
        help="directory with train/valid/test indexed datasets (default: OUT/corpus, built "
        "from the embedded default corpus if missing)",
    )
    parser.add_argument("--iters", type=int, default=None, help="training iterations per model")
    parser.add_argument("--eval-blocks", type=int, default=None, help="PTB test blocks (all: 0)")
    parser.add_argument("--t-samples", type=int, default=None, help="ELBO t-samples per block")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--nproc", type=int, default=1, help="processes per training run")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--force", action="store_true", help="retrain finished models")
    parser.add_argument("--reeval", action="store_true",
                        help="keep the trained SEDD checkpoints, score PTB test again")  # fmt: skip
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    for name in ("iters", "eval_blocks", "t_samples"):
        if getattr(args, name) is None:
            setattr(args, name, size[name])
    if args.iters < 1 or args.t_samples < 2 or args.nproc < 1:
        parser.error("need --iters >= 1, --t-samples >= 2 and --nproc >= 1")
    if args.eval_blocks is not None and args.eval_blocks < 0:
        parser.error("--eval-blocks must be >= 0 (0: all blocks)")
    args.eval_blocks = args.eval_blocks or None
    return args


def corpus_dir(args, out: Path) -> Path:
    if args.corpus is not None:
        corpus = Path(args.corpus)
        missing = [s for s in ("train", "valid", "test") if not (corpus / f"{s}.idx").is_file()]
        if missing:
            sys.exit(f"paper_ordering.py: error: --corpus {corpus}: no {', '.join(missing)} split")
        return corpus
    corpus = out / "corpus"
    if not (corpus / "test.idx").is_file():
        from sedd_megatron.datasets.corpus import build_corpus  # lazy: tokenizer, on demand

        build_corpus(str(corpus), workers=2)
    return corpus


def training_command(name: str, args, corpus: Path, run_dir: Path) -> list[str]:
    size = SIZES[args.size]
    script, model = MODELS[name]
    model_flags = [token for flag, value in model.items() for token in (f"--{flag}", value)]
    cmd = [
        str(script), "--config", str(REPO / size["config"]), *size["flags"], *model_flags,
        "--train-iters", str(args.iters), "--lr-warmup-iters", str(min(size["warmup"],
                                                                       args.iters - 1)),
        "--eval-interval", str(min(size["eval_interval"], args.iters)),
        "--eval-iters", str(size["eval_iters"]), "--save-interval", str(args.iters),
        "--log-interval", str(max(1, min(50, args.iters // 8))), "--seed", str(args.seed),
        "--train-data-path", str(corpus / "train"), "--valid-data-path", str(corpus / "valid"),
        "--test-data-path", str(corpus / "test"), "--save", str(run_dir / "checkpoint"),
    ]  # fmt: skip
    if name == "ar":
        cmd += ["--ar-eval-data", "ptb-test", "--ar-eval-batch-size", str(size["batch"]),
                "--ar-eval-output", str(run_dir / "likelihood.json")]  # fmt: skip
        if args.eval_blocks:
            cmd += ["--ar-eval-max-blocks", str(args.eval_blocks)]
    if args.nproc == 1:
        return [sys.executable, *cmd]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={args.nproc}", *cmd]  # fmt: skip


def elbo_command(args, run_dir: Path) -> list[str]:
    size = SIZES[args.size]
    cmd = [sys.executable, str(EVAL_ELBO), "--load", str(run_dir / "checkpoint"),
           "--backend", "megatron", "--data", "ptb-test", "--design", "importance",
           "--num-t-samples", str(args.t_samples), "--batch-size", str(size["batch"]),
           "--seed", str(args.seed),
           "--output", str(run_dir / "likelihood.json"),
           "--plot", str(run_dir / "elbo_integrand.png")]  # fmt: skip
    if args.eval_blocks:
        cmd += ["--blocks", str(args.eval_blocks)]
    return cmd


PROGRESS = ("consumed samples", "validation loss", "error:", "Error", "Traceback")


def run_logged(cmd: list[str], log: Path, label: str) -> None:
    """Run ``cmd`` with its output in ``log``; show the progress lines; exit on failure."""
    # one thread unless told: a shared machine oversubscribed by OpenMP threads runs far slower
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    print(f"[{label}] {' '.join(cmd[1:])}\n[{label}] log: {log}", flush=True)
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for line in proc.stdout:
            log_file.write(line)
            if any(key in line for key in PROGRESS) and "site-packages/torch" not in line:
                print(f"[{label}] {line.rstrip()[:150]}", flush=True)
        if proc.wait() != 0:
            sys.exit(
                f"paper_ordering.py: error: {label} failed (exit {proc.returncode}); see {log}"
            )


def run_model(name: str, args, corpus: Path, out: Path) -> dict:
    """Train ``name`` and score PTB test; returns (and keeps in ``result.json``) its record."""
    run_dir = out / name
    settings = {"size": args.size, "iters": args.iters, "eval_blocks": args.eval_blocks,
                "t_samples": args.t_samples, "seed": args.seed, "nproc": args.nproc,
                "corpus": str(corpus)}  # fmt: skip
    done = run_dir / "result.json"
    command = training_command(name, args, corpus, run_dir)
    record = json.loads(done.read_text()) if done.is_file() else {}
    if record.get("settings") == settings and not args.force:
        if not (args.reeval and name != "ar"):
            print(f"[{name}] already done: {done}", flush=True)
            return record
        train_seconds = record["train_seconds"]
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        start = time.time()
        run_logged(command, run_dir / "train.log", name)
        train_seconds = time.time() - start
    if name != "ar":
        run_logged(elbo_command(args, run_dir), run_dir / "eval.log", f"{name} ELBO")
    summary = json.loads((run_dir / "checkpoint" / "sedd_summary.json").read_text())
    likelihood = run_dir / "likelihood.json"
    record = {
        "name": name,
        "settings": settings,
        "command": command[1:],
        "train_seconds": train_seconds,
        "training": summary,
        "likelihood": likelihood_record(name, json.loads(likelihood.read_text())),
    }
    with atomic_open(done) as f:
        json.dump(record, f, indent=1)
    return record


def likelihood_record(name: str, doc: dict) -> dict:
    """The PTB test numbers of one model, in one form for AR (exact) and SEDD (bound)."""
    if name == "ar":
        return {
            "kind": "exact",
            "nats_per_token": doc["nats_per_token"],
            "perplexity": doc["perplexity"],
            "ci_perplexity": doc["ci_perplexity"],
            "blocks": doc["blocks"],
            "tokens": doc["tokens"],
        }
    result = doc["result"]
    record = {
        "kind": "bound ([t_eps, 1], the paper's convention)",
        "nats_per_token": result["nats_per_token"],
        "perplexity": result["ppl_bound"],
        "ci_perplexity": result["ci_ppl_bound"],
        "blocks": result["blocks"],
        "tokens": result["tokens"],
        "evaluations": result["evaluations"],
    }
    if result.get("complete"):  # the two terms the paper drops, and the complete bound
        record["prior_nats_per_token"] = result["prior"]["nats_per_token"]
        record["tail"] = result["tail"]
        record["complete"] = result["complete"]
    return record


def compare(records: dict) -> dict:
    """The ordering checks and ratios."""
    out = {}
    lk = {name: r["likelihood"] for name, r in records.items()}
    if "sedd-absorb" in lk and "sedd-uniform" in lk:
        a, u = lk["sedd-absorb"], lk["sedd-uniform"]
        out["absorb_below_uniform"] = a["perplexity"] < u["perplexity"]
        out["absorb_uniform_intervals_disjoint"] = a["ci_perplexity"][1] < u["ci_perplexity"][0]
        out["uniform_over_absorb"] = u["perplexity"] / a["perplexity"]
    if "sedd-absorb" in lk and "ar" in lk:
        out["absorb_over_ar"] = lk["sedd-absorb"]["perplexity"] / lk["ar"]["perplexity"]
        out["ar_below_absorb"] = lk["ar"]["perplexity"] < lk["sedd-absorb"]["perplexity"]
    if "sedd-uniform" in lk and "ar" in lk:
        out["uniform_over_ar"] = lk["sedd-uniform"]["perplexity"] / lk["ar"]["perplexity"]
    out["published_absorb_over_ar"] = PUBLISHED["sedd-absorb"] / PUBLISHED["ar"]
    out["published_uniform_over_absorb"] = PUBLISHED["sedd-uniform"] / PUBLISHED["sedd-absorb"]
    return out


def plot(records: dict, out: Path) -> list[str]:
    import matplotlib  # lazy: only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, record in records.items():
        points = [(v["tokens"], v["loss"]) for v in record["training"].get("validation", [])
                  if v["split"] == "valid"]  # fmt: skip
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token; SEDD: ELBO estimate)")
    ax.set_title("Validation loss, same data, size and tokens")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(str(out / "validation_loss.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = list(records)
    ppl = [records[n]["likelihood"]["perplexity"] for n in names]
    lo = [p - records[n]["likelihood"]["ci_perplexity"][0] for n, p in zip(names, ppl, strict=True)]
    hi = [records[n]["likelihood"]["ci_perplexity"][1] - p for n, p in zip(names, ppl, strict=True)]
    ax.bar(names, ppl, yerr=[lo, hi], capsize=6, color=["C0", "C1", "C2"][: len(names)])
    for i, p in enumerate(ppl):
        ax.text(i, p, f"{p:,.0f}", ha="center", va="bottom")
    ax.set_yscale("log")
    ax.set_ylabel("PTB test perplexity (SEDD: bound; 95 % interval)")
    ax.set_title("Final perplexity on identical PTB test blocks")
    fig.tight_layout()
    paths.append(str(out / "perplexity.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = corpus_dir(args, out)
    records = {name: run_model(name, args, corpus, out) for name in args.models}
    doc = {
        "command": " ".join(["python", "benchmarks/paper_ordering.py", *(argv or sys.argv[1:])]),
        "size": args.size,
        "training_tokens": {n: r["training"]["tokens_trained"] for n, r in records.items()},
        "eval_data": "ptb-test",
        "models": records,
        "comparison": compare(records),
        "published": PUBLISHED,
    }
    doc["plots"] = plot(records, out)
    with atomic_open(out / "results.json") as f:
        json.dump(doc, f, indent=1)
    print_table(records, doc["comparison"])
    return doc


def print_table(records: dict, comparison: dict) -> None:
    """The results as a Markdown table (what docs/paper_ordering.md shows) and the comparison."""
    print("\n| model | training tokens | PTB test perplexity | 95 % interval | nats/token "
          "| complete bound | final validation loss |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, r in records.items():
        lk = r["likelihood"]
        lo, hi = lk["ci_perplexity"]
        kind = "exact" if lk["kind"] == "exact" else "≤"
        complete = lk.get("complete")
        whole = f"≤ {complete['ppl_bound']:,.0f}" if complete else "exact"
        valid = r["training"].get("final_valid_loss")
        valid = f"{valid:.3f}" if valid is not None else "-"
        tokens = r["training"]["tokens_trained"]
        print(f"| {name} | {tokens:,} | {kind} {lk['perplexity']:,.0f} | [{lo:,.0f}, {hi:,.0f}] "
              f"| {lk['nats_per_token']:.4f} | {whole} | {valid} |")  # fmt: skip
    print(json.dumps(comparison, indent=1))
    if not all(math.isfinite(r["likelihood"]["perplexity"]) for r in records.values()):
        print("warning: a perplexity is not finite", flush=True)


if __name__ == "__main__":
    main()
