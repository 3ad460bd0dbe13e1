#!/usr/bin/env python
"""Sample text from a SEDD model (a pretrain_sedd.py checkpoint or a plain model directory).

Examples:
  python tools/generate_sedd.py --load runs/quickstart/checkpoint --num-samples 4 --steps 64
  python tools/generate_sedd.py --load CKPT --template "The capital of France is [MASK:3]." \\
      --num-samples 8 --output samples.jsonl
  python tools/generate_sedd.py --load CKPT --prompts prompts.jsonl --predictor euler --steps 128
  torchrun --nproc_per_node=2 tools/generate_sedd.py --load CKPT --tensor-model-parallel-size 2
  python tools/generate_sedd.py --load tests/data/conformance/tiny_absorb --no-detokenize \\
      --prefix "5 6 7" --num-samples 2

Writes one JSON record per sample (JSONL, stdout by default): text, tokens, prompt, settings,
seed and sample_index; (seed, sample_index) reproduces a sample with any batch size or layout.
Records are written as their batches finish: with --output FILE to FILE.partial, renamed to
FILE when the run is complete. Interrupted (Ctrl-C), the run keeps the finished samples in
FILE.partial (valid JSONL), says how many, and exits with status 130.
"""

import argparse
import contextlib
import sys

from sedd_megatron.console import (
    ArgumentParser,
    add_model_argument,
    exit_on_interrupt,
    quiet_third_party,
    resolve_model,
)

exit_on_interrupt()  # Ctrl-C from here on: one line, exit status 130
quiet_third_party()  # before torch/Megatron are imported; SEDD_SHOW_WARNINGS=1 shows all

import torch.distributed as dist

from sedd_megatron import runtime
from sedd_megatron.checkpoint import open_model, resolve_backend, source_kind, verify_checksums
from sedd_megatron.checkpoint.layouts import check_tool_layout
from sedd_megatron.datasets.tokenizers import add_tokenizer_args, tokenizer_from_args
from sedd_megatron.errors import ConfigError, DataError, PromptError
from sedd_megatron.sampling import (
    Prompt,
    RecordWriter,
    SamplingOptions,
    check_output,
    check_prompts,
    default_device,
    ids_encoder,
    iter_records,
    read_prompts,
)
from sedd_megatron.sampling import options as checks


def _setting(check, convert=int):
    """An argparse type: ``convert`` the text, then the library's ``check`` of the setting."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return check(value)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    add_model_argument(
        parser, "pretrain_sedd.py --save directory or plain model dir", positional=True
    )
    parser.add_argument(
        "--iteration",
        type=_setting(checks.check_iteration),
        help="checkpoint iteration (default: latest)",
    )
    parser.add_argument("--raw", action="store_true", help="raw weights (default: EMA when saved)")
    parser.add_argument(
        "--no-verify-checksums",
        action="store_true",
        help="skip checking the model's files against their checksum manifest",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "plain", "megatron"),
        default="auto",
        help="auto: plain twin for a plain dir outside torchrun, else Megatron",
    )
    parser.add_argument("--tensor-model-parallel-size", "--tp", type=int, default=1, dest="tp")
    parser.add_argument(
        "--pipeline-model-parallel-size",
        "--pp",
        type=int,
        default=1,
        dest="pp",
        help="pipeline stages; blocks it does not divide are split unevenly, e.g. 3 -> 2+1 "
        "(see convert_checkpoint.py import --help)",
    )
    group = parser.add_argument_group("sampler")
    group.add_argument("--predictor", choices=checks.PREDICTORS, default="analytic")
    group.add_argument(
        "--steps",
        type=_setting(checks.check_steps),
        default=128,
        help="predictor steps, >= 1 (default 128)",
    )
    group.add_argument(
        "--eps",
        type=_setting(checks.check_eps, float),
        default=1e-5,
        help="final time, in (0, 1) (default 1e-5)",
    )
    group.add_argument(
        "--fp32-sampling",
        action="store_true",
        help="the reference's float32 draws from the global RNG (TP=1)",
    )
    group.add_argument(
        "--reuse-scores",
        choices=("auto", "on", "off"),
        default="auto",
        help="rows in which no token changed since the last forward pass reuse its log-score, "
        "shifted to the new noise level, instead of running the model (auto: on for "
        "time-independent models, where it is exact; on: also for sigma-conditioned models, "
        "an approximation; not with --fp32-sampling)",
    )
    group.add_argument("--seed", type=_setting(checks.check_seed), default=0, help="in [0, 2**63)")
    group.add_argument(
        "--num-samples", type=_setting(checks.check_num_samples), default=1, help="per prompt"
    )
    group.add_argument("--batch-size", type=_setting(checks.check_batch_size), default=8)
    group.add_argument(
        "--seq-length",
        type=_setting(checks.check_seq_length),
        help="tokens per sample (default: the model's training length)",
    )
    group = parser.add_argument_group("prompts")
    group.add_argument("--prefix", help="text at the start of every sample")
    group.add_argument("--suffix", help="text at the end of every sample")
    group.add_argument("--template", help='infill template, e.g. "Paris is [MASK:5]."')
    group.add_argument("--prompts", help="JSONL file: one {prefix, suffix, template, id} a line")
    group = parser.add_argument_group("output")
    group.add_argument(
        "--output",
        metavar="FILE",
        help="JSONL file (default: stdout); its directory must exist. Records go to "
        "FILE.partial as batches finish, renamed to FILE at the end; after an interrupt "
        "(Ctrl-C) FILE.partial keeps the finished samples",
    )
    group.add_argument(
        "--no-detokenize",
        action="store_true",
        help="no tokenizer: prompts are token ids, records carry no text",
    )
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_tokenizer_args(parser)
    args = parser.parse_args(argv)
    resolve_model(parser, args)
    return args


#: The one line ``--reuse-scores on`` prints for a sigma-conditioned model.
APPROXIMATE_REUSE = (
    "generate_sedd.py: note: --reuse-scores on with a sigma-conditioned model: reused scores are "
    "an approximation (exact only for time-independent models, --sedd-time-conditioning none)"
)


def _prompts(args) -> list[Prompt]:
    given = args.prefix is not None or args.suffix is not None or args.template is not None
    if args.prompts and given:
        raise PromptError("--prompts cannot be combined with --prefix/--suffix/--template")
    if args.prompts:
        return read_prompts(args.prompts)
    return [Prompt(prefix=args.prefix, suffix=args.suffix, template=args.template)]


def _interrupted(writer: RecordWriter | None, rank0: bool) -> int:
    """Ctrl-C: say what was kept (rank 0), exit status 130."""
    if rank0:
        if writer is None or not writer.written:
            kept = "no sample had finished; nothing written"
        elif writer.path is None:
            kept = f"{writer.written} finished samples were written to stdout"
        else:
            kept = f"kept the {writer.written} finished samples in {writer.where}"
        print(f"generate_sedd.py: interrupted: {kept}", file=sys.stderr, flush=True)
    return 130


def main(argv=None) -> int:
    args = parse_args(argv)
    writer, rank0, stats = None, True, {}
    try:
        # everything that can be checked is checked before the model loads
        if args.reuse_scores == "on" and args.fp32_sampling:
            raise ConfigError(
                "--reuse-scores on cannot be combined with --fp32-sampling (the reference's "
                "draws run the model at every step)"
            )
        reuse = {"auto": None, "on": True, "off": False}[args.reuse_scores]
        options = SamplingOptions(
            args.predictor, args.steps, args.eps, True, args.fp32_sampling, reuse
        )
        check_output(args.output)
        source_kind(args.load)  # a missing or wrong model directory
        prompts = _prompts(args)
        tokenizer = None if args.no_detokenize else tokenizer_from_args(args)
        check_prompts(prompts, tokenizer.encode if tokenizer else ids_encoder, args.seq_length)
        backend = resolve_backend(args.load, args.backend)
        if not args.no_verify_checksums:
            verify_checksums(args.load, args.iteration)  # before anything reads the files
        check_tool_layout(args.load, args.tp, args.pp, backend, iteration=args.iteration)
        world = runtime.world(args.tp, args.pp, seed=args.seed) if backend == "megatron" else None
        with world or contextlib.nullcontext():
            model = open_model(
                args.load,
                backend,
                iteration=args.iteration,
                use_ema=False if args.raw else None,
                seq_length=args.seq_length,
                device=default_device(),
                verify_checksums=not args.no_verify_checksums,
            )
            rounds = iter_records(
                model,
                prompts,
                tokenizer=tokenizer,
                num_samples=args.num_samples,
                batch_size=args.batch_size,
                seed=args.seed,
                options=options,
                progress=not args.no_progress,
                extra_settings=dict(model=args.load, raw=args.raw, tp=args.tp, pp=args.pp),
                stats=stats,
            )
            rank0 = not dist.is_initialized() or dist.get_rank() == 0
            if rank0 and reuse and not getattr(model, "time_independent", False):
                print(APPROXIMATE_REUSE, file=sys.stderr, flush=True)
            writer = RecordWriter(args.output) if rank0 else None
            with writer or contextlib.nullcontext():
                for records in rounds:  # every rank: each round gathers the replicas' samples
                    if writer is not None:
                        writer.write(records)
            if rank0 and stats.get("rows_reused"):
                print(
                    f"generate_sedd.py: reused scores: the model evaluated "
                    f"{stats['rows_evaluated']} of "
                    f"{stats['rows_evaluated'] + stats['rows_reused']} row-steps in "
                    f"{stats['forward_passes']} forward passes (replica of rank 0)",
                    file=sys.stderr,
                )
    except (PromptError, DataError, ValueError, FileNotFoundError) as e:
        print(f"generate_sedd.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(writer, rank0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
