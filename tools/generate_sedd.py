#!/usr/bin/env python
"""Sample text from a SEDD model (a pretrain_sedd.py checkpoint or a plain model directory).

Examples:
  python tools/generate_sedd.py runs/quickstart/checkpoint --num-samples 4 --steps 64
  python tools/generate_sedd.py CKPT --template "The capital of France is [MASK:3]." \\
      --num-samples 8 --output samples.jsonl
  python tools/generate_sedd.py CKPT --prompts prompts.jsonl --predictor euler --steps 128
  torchrun --nproc_per_node=2 tools/generate_sedd.py CKPT --tensor-model-parallel-size 2
  python tools/generate_sedd.py tests/data/conformance/tiny_absorb --no-detokenize \\
      --prefix "5 6 7" --num-samples 2

Writes one JSON record per sample (JSONL, stdout by default): text, tokens, prompt, settings,
seed and sample_index; (seed, sample_index) reproduces a sample with any batch size or layout.
"""

import argparse
import contextlib
import sys

import torch.distributed as dist

from sedd_megatron import runtime
from sedd_megatron.checkpoint import open_model, resolve_backend
from sedd_megatron.datasets.cli import quiet_megatron_import
from sedd_megatron.datasets.tokenizers import add_tokenizer_args, tokenizer_from_args
from sedd_megatron.errors import DataError, PromptError
from sedd_megatron.sampling import (
    Prompt,
    SamplingOptions,
    default_device,
    generate,
    read_prompts,
    write_jsonl,
)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="pretrain_sedd.py --save directory or plain model dir")
    parser.add_argument("--iteration", type=int, help="checkpoint iteration (default: latest)")
    parser.add_argument("--raw", action="store_true", help="raw weights (default: EMA when saved)")
    parser.add_argument(
        "--backend",
        choices=("auto", "plain", "megatron"),
        default="auto",
        help="auto: plain twin for a plain dir outside torchrun, else Megatron",
    )
    parser.add_argument("--tensor-model-parallel-size", "--tp", type=int, default=1, dest="tp")
    parser.add_argument("--pipeline-model-parallel-size", "--pp", type=int, default=1, dest="pp")
    group = parser.add_argument_group("sampler")
    group.add_argument("--predictor", choices=("analytic", "euler", "none"), default="analytic")
    group.add_argument("--steps", type=int, default=128, help="predictor steps (default 128)")
    group.add_argument("--eps", type=float, default=1e-5, help="final time (default 1e-5)")
    group.add_argument(
        "--fp32-sampling",
        action="store_true",
        help="the reference's float32 draws from the global RNG (TP=1)",
    )
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument("--seq-length", type=int, help="default: the model's training length")
    group = parser.add_argument_group("prompts")
    group.add_argument("--prefix", help="text at the start of every sample")
    group.add_argument("--suffix", help="text at the end of every sample")
    group.add_argument("--template", help='infill template, e.g. "Paris is [MASK:5]."')
    group.add_argument("--prompts", help="JSONL file: one {prefix, suffix, template, id} a line")
    group = parser.add_argument_group("output")
    group.add_argument("--output", help="JSONL file, written atomically (default: stdout)")
    group.add_argument(
        "--no-detokenize",
        action="store_true",
        help="no tokenizer: prompts are token ids, records carry no text",
    )
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_tokenizer_args(parser)
    return parser.parse_args(argv)


def _prompts(args) -> list[Prompt]:
    given = args.prefix is not None or args.suffix is not None or args.template is not None
    if args.prompts and given:
        raise PromptError("--prompts cannot be combined with --prefix/--suffix/--template")
    if args.prompts:
        return read_prompts(args.prompts)
    return [Prompt(prefix=args.prefix, suffix=args.suffix, template=args.template)]


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_megatron_import()
    try:
        prompts = _prompts(args)
        tokenizer = None if args.no_detokenize else tokenizer_from_args(args)
        options = SamplingOptions(args.predictor, args.steps, args.eps, True, args.fp32_sampling)
        backend = resolve_backend(args.source, args.backend)
        world = runtime.world(args.tp, args.pp, seed=args.seed) if backend == "megatron" else None
        with world or contextlib.nullcontext():
            model = open_model(
                args.source,
                backend,
                iteration=args.iteration,
                use_ema=False if args.raw else None,
                seq_length=args.seq_length,
                device=default_device(),
            )
            records = generate(
                model,
                prompts,
                tokenizer=tokenizer,
                num_samples=args.num_samples,
                batch_size=args.batch_size,
                seed=args.seed,
                options=options,
                progress=not args.no_progress,
                extra_settings=dict(model=args.source, raw=args.raw, tp=args.tp, pp=args.pp),
            )
            if not dist.is_initialized() or dist.get_rank() == 0:
                write_jsonl(records, args.output)
    except (PromptError, DataError, ValueError, FileNotFoundError) as e:
        print(f"generate_sedd.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
