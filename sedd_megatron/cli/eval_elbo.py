#!/usr/bin/env python
"""ELBO / perplexity bound of a SEDD model (paper protocol by default), with a confidence interval.

The headline number is the paper's (the [t_eps, 1] term); the two terms the paper drops (the
exact prior term and an estimate of the [0, t_eps] term, --tail-samples) are printed and stored
beside it, with the complete bound they make (docs/math.md §6.5).

Examples:
  # a published-layout directory, PTB test, the paper's 1000 t-samples per block
  python tools/eval_elbo_sedd.py --load runs/quickstart/export --data ptb-test
  # a pretrain_sedd.py checkpoint, TP=2, data parallel over blocks, variance-reduced design
  torchrun --nproc-per-node 4 tools/eval_elbo_sedd.py --load runs/quickstart/checkpoint --tp 2 \
      --data ptb-valid --design importance --num-t-samples 100 --output elbo.json --plot elbo.png
  # how many fewer model evaluations the variance-reduced designs need for the same CI width
  python tools/eval_elbo_sedd.py --load CKPT --data ptb-valid --blocks 16 --compare mc,importance
"""

import argparse
import contextlib
import json
import os
import sys

from sedd_megatron.console import (
    ArgumentParser,
    add_deprecated,
    exit_on_interrupt,
    quiet_third_party,
)

exit_on_interrupt()  # Ctrl-C from here on: one line, exit status 130
quiet_third_party()  # before torch/Megatron are imported; SEDD_SHOW_WARNINGS=1 shows all

from sedd_megatron.datasets.checks import check_int, check_output_file
from sedd_megatron.errors import CheckpointError, ConfigError, DataError, EvalError
from sedd_megatron.evaluation.settings import (
    DESIGNS,
    DETOKENIZERS,
    MIN_REPLICATES,
    check_elbo_settings,
    check_eval_data,
)

#: How check_elbo_settings names this tool's settings in its errors.
FLAGS = {
    "num_t_samples": "--num-t-samples",
    "replicates": "--replicates",
    "t_eps": "--t-eps",
    "batch_size": "--batch-size",
    "level": "--level",
    "seq_length": "--seq-length",
    "max_blocks": "--blocks",
    "compare": "--compare",
    "tail_samples": "--tail-samples",
}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    g = p.add_argument_group("model")
    g.add_argument("--load", required=True, help="pretrain_sedd.py checkpoint or plain directory")
    g.add_argument("--iteration", type=int, help="checkpoint iteration (default: latest)")
    g.add_argument("--raw", action="store_true", help="raw weights instead of EMA")
    g.add_argument(
        "--no-verify-checksums",
        action="store_true",
        help="skip checking the model's files against their checksum manifest",
    )
    g.add_argument(
        "--backend",
        choices=("auto", "plain", "megatron"),
        default="auto",
        help="plain PyTorch (published layout, one process) or Megatron (TP/PP/DP); "
        "auto: plain for a published-layout directory in a single process",
    )
    g.add_argument("--tp", type=int, default=1, help="tensor parallel size (Megatron)")
    g.add_argument(
        "--pp",
        type=int,
        default=1,
        help="pipeline parallel size (Megatron); blocks it does not divide are split unevenly, "
        "e.g. 3 -> 2+1 (see convert_checkpoint.py import --help)",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default="ptb-test",
        help="ptb-test | ptb-valid | ptb-train | a .txt/.jsonl file | an indexed "
        "dataset prefix (PREFIX.bin/.idx)",
    )
    g.add_argument(
        "--json-keys",
        dest="json_key",
        default="text",
        metavar="KEY",
        help="JSONL field of the text",
    )
    add_deprecated(g, "--json-key", "--json-keys", dest="json_key")
    g.add_argument("--per-line", action="store_true", help="text file: one document per line")
    g.add_argument("--detokenizer", default="auto", choices=DETOKENIZERS)
    g.add_argument("--seq-length", type=int, help="block length (default: the model's)")
    g.add_argument("--blocks", type=int, help="evaluate only the first N blocks")
    g = p.add_argument_group("estimator")
    g.add_argument(
        "--num-t-samples",
        type=int,
        default=1000,
        help=f"model evaluations per block (>= {MIN_REPLICATES}: the confidence interval "
        "estimates each block's Monte-Carlo variance from independent replicates)",
    )
    g.add_argument(
        "--design",
        choices=DESIGNS,
        default="mc",
        help="mc: the paper's i.i.d. t; stratified: stratified t; importance: "
        "count-stratified importance sampling over (t, #corrupted)",
    )
    g.add_argument(
        "--replicates",
        type=int,
        help=f"independent replicates per block (stratified/importance; >= {MIN_REPLICATES}, "
        "dividing --num-t-samples; default 10, 8, 5, 4 or 2 if one divides it)",
    )
    g.add_argument("--t-eps", type=float, default=1e-3, help="t ~ [t_eps, 1]")
    g.add_argument(
        "--tail-samples",
        type=int,
        help="model evaluations per block for the [0, t_eps] term of the complete bound "
        f"(default: 2%% of --num-t-samples, at least {MIN_REPLICATES}; 0: off)",
    )
    g.add_argument("--batch-size", type=int, default=8, help="sequences per model call")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--level", type=float, default=0.95, help="confidence level, in (0, 1)")
    g.add_argument(
        "--compare",
        help="comma-separated designs to compare (the first is the "
        "baseline): prints evaluations needed for equal CI width",
    )
    g = p.add_argument_group("output")
    g.add_argument("--output", help="JSON file: settings, summary, per-block values")
    g.add_argument("--save-draws", action="store_true", help="also store every draw in the JSON")
    g.add_argument("--plot", help="PNG of the ELBO integrand against t")
    g.add_argument("--no-progress", action="store_true")
    return p


def compare_list(args) -> list[str] | None:
    if args.compare is None:
        return None
    return [d.strip() for d in args.compare.split(",") if d.strip()]


def check_settings(args) -> None:
    """Every setting and path, before torch or the model loads (nothing is written on error)."""
    check_elbo_settings(
        num_t_samples=args.num_t_samples,
        design=args.design,
        replicates=args.replicates,
        t_eps=args.t_eps,
        batch_size=args.batch_size,
        level=args.level,
        seq_length=args.seq_length,
        max_blocks=args.blocks,
        compare=compare_list(args),
        tail_samples=args.tail_samples,
        names=FLAGS,
    )
    check_int(args.iteration, "--iteration", minimum=0, optional=True, error=EvalError)
    if args.compare is not None and args.plot:
        raise EvalError("--plot draws one design's integrand; it cannot be used with --compare")
    if args.save_draws and not args.output:
        raise EvalError("--save-draws stores the draws in the --output JSON: give --output")
    for flag in ("output", "plot"):
        if getattr(args, flag):
            check_output_file(getattr(args, flag), f"--{flag}", error=EvalError)
    if args.output and args.plot and os.path.abspath(args.output) == os.path.abspath(args.plot):
        raise EvalError("--output and --plot name the same file")
    if not os.path.exists(args.load):
        raise EvalError(f"model not found: {args.load}")
    check_eval_data(args.data, json_key=args.json_key, detokenizer=args.detokenizer)


def open_model_for(args):
    """(model, backend): the plain twin here, or "megatron" (opened in the tool's world)."""
    from sedd_megatron.checkpoint import is_plain_dir  # lazy: imports torch; checks come first

    if not os.path.exists(args.load):
        raise EvalError(f"model not found: {args.load}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plain = args.backend == "plain" or (
        args.backend == "auto" and is_plain_dir(args.load) and world == 1 and args.tp * args.pp == 1
    )
    if plain and world > 1:
        raise EvalError("--backend plain runs in one process; use --backend megatron")
    if not plain and world % (args.tp * args.pp):
        raise EvalError(f"WORLD_SIZE {world} is not a multiple of tp*pp = {args.tp * args.pp}")
    return "plain" if plain else "megatron"


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    check_settings(args)
    backend = open_model_for(args)
    from sedd_megatron.checkpoint import verify_checksums  # lazy: torch; checks first
    from sedd_megatron.checkpoint.layouts import check_tool_layout  # lazy: torch; checks first

    if not args.no_verify_checksums:
        verify_checksums(args.load, args.iteration)  # before anything reads the files
    check_tool_layout(args.load, args.tp, args.pp, backend, iteration=args.iteration)
    import torch

    from sedd_megatron import runtime  # lazy: torch and Megatron load after the checks
    from sedd_megatron.evaluation.report import elbo_report, open_eval_model  # lazy: as above

    world = runtime.world(args.tp, args.pp, seed=args.seed) if backend == "megatron" else None
    with world or contextlib.nullcontext():
        model = open_eval_model(
            args.load,
            backend=backend,
            iteration=args.iteration,
            use_ema=False if args.raw else None,
            seq_length=args.seq_length,
            verify_checksums=not args.no_verify_checksums,
        )
        compare = compare_list(args)
        report = elbo_report(
            model,
            args.data,
            num_t_samples=args.num_t_samples,
            max_blocks=args.blocks,
            design=args.design,
            replicates=args.replicates,
            t_eps=args.t_eps,
            seq_length=args.seq_length,
            batch_size=args.batch_size,
            seed=args.seed,
            json_path=args.output,
            plot_path=None if args.compare else args.plot,
            progress=not args.no_progress,
            level=args.level,
            json_key=args.json_key,
            per_line=args.per_line,
            detokenizer=args.detokenizer,
            save_draws=args.save_draws,
            compare=compare,
            tail_samples=args.tail_samples,
        )
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return 0
    print(f"data: {json.dumps(report['data'])}", flush=True)
    if compare:
        print_comparison(report["designs"])
        return 0
    print_summary(report)
    for path in (args.output, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


def print_summary(s: dict) -> None:
    pct = round(100 * s["confidence_level"])
    lo, hi = s["ci_nats_per_token"]
    plo, phi = s["ci_ppl_bound"]
    print(
        f"ELBO: {s['nats_per_token']:.4f} nats/token ({pct}% CI {lo:.4f} .. {hi:.4f}), "
        f"{s['bits_per_token']:.4f} bits/token\n"
        f"perplexity <= {s['ppl_bound']:.3f} ({pct}% CI {plo:.3f} .. {phi:.3f})\n"
        f"{s['blocks']} blocks, {s['tokens']} tokens, {s['evaluations']} model evaluations",
        flush=True,
    )
    print_dropped_terms(s)
    timing = s.get("timing") or {}
    if timing.get("evaluations_per_second"):
        print(
            f"{timing['seconds']:.1f} s, {timing['evaluations_per_second']:.1f} evaluations/s",
            flush=True,
        )


def print_dropped_terms(s: dict) -> None:
    """The prior and [0, t_eps] terms and the complete bound (absent from old summaries)."""
    if "prior" not in s:
        return
    pct = round(100 * s["confidence_level"])
    line = f"dropped terms: prior {s['prior']['nats_per_token']:.5f} nats/token (exact), "
    tail = s.get("tail")
    if tail is None:
        print(line + "[0, t_eps] not estimated (--tail-samples 0)", flush=True)
        return
    lo, hi = tail["ci_nats_per_token"]
    print(
        line + f"[0, t_eps] {tail['nats_per_token']:.5f} nats/token ({pct}% CI {lo:.5f} .. "
        f"{hi:.5f}, {tail['evaluations']} model evaluations)",
        flush=True,
    )
    c = s["complete"]
    lo, hi = c["ci_nats_per_token"]
    plo, phi = c["ci_ppl_bound"]
    print(
        f"complete bound: {c['nats_per_token']:.4f} nats/token ({pct}% CI {lo:.4f} .. {hi:.4f}), "
        f"{c['bits_per_token']:.4f} bits/token, perplexity <= {c['ppl_bound']:.3f} "
        f"({pct}% CI {plo:.3f} .. {phi:.3f})",
        flush=True,
    )


def print_comparison(rows: dict) -> None:
    print(
        f"{'design':<12} {'nats/token':>11} {'CI half-width':>14} {'evals':>7} "
        f"{'var x evals':>12} {'fewer evals':>12}"
    )
    for name, r in rows.items():
        print(
            f"{name:<12} {r['nats_per_token']:>11.4f} {r['ci_half_width_nats']:>14.5f} "
            f"{r['evaluations']:>7d} {r['variance_x_evaluations']:>12.4g} "
            f"{r['evaluation_savings_factor']:>11.1f}x"
        )
    print(
        "fewer evals: model evaluations the baseline (first row) needs for the same CI "
        "half-width, divided by this design's"
    )


def main(argv=None) -> int:
    try:
        return _main(argv)
    except (EvalError, DataError, CheckpointError, ConfigError) as err:
        print(f"eval_elbo_sedd.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
