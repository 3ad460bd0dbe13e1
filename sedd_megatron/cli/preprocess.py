#!/usr/bin/env python
"""Tokenize text/JSONL files into Megatron indexed datasets (PREFIX_text_document.bin + .idx).

As Megatron's own preprocess_data.py, each JSON key KEY (text files: "text") is written to
PREFIX_KEY_document.bin/.idx; that name is what pretrain_sedd.py --data-path takes.

Examples:
  python tools/preprocess_data.py --input docs.jsonl --json-keys text --output-prefix data/my
  python tools/preprocess_data.py --input a.txt b.txt --per-line --output-prefix data/lines \\
      --workers 2
  python tools/preprocess_data.py --input x.txt --output-prefix data/x \\
      --tokenizer sentencepiece --tokenizer-model sp.model
"""

import sys

from sedd_megatron.console import ArgumentParser, exit_on_interrupt, quiet_third_party

exit_on_interrupt()  # Ctrl-C from here on: one line, exit status 130
quiet_third_party()  # before torch/Megatron are imported; SEDD_SHOW_WARNINGS=1 shows all

from sedd_megatron.datasets.cli import run
from sedd_megatron.datasets.preprocess import check_inputs, check_preprocess_settings, preprocess
from sedd_megatron.datasets.tokenizers import (
    add_tokenizer_args,
    check_tokenizer_args,
    tokenizer_from_args,
)

#: How check_preprocess_settings names this tool's settings in its errors.
FLAGS = {"workers": "--workers", "encoding": "--encoding", "json_keys": "--json-keys"}


def _main(argv) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="text or JSONL files")
    parser.add_argument(
        "--output-prefix",
        required=True,
        help="writes PREFIX_KEY_document.bin/.idx per JSON key (default key: text)",
    )
    parser.add_argument("--json-keys", nargs="+", help="JSONL keys to tokenize (default: text)")
    parser.add_argument("--per-line", action="store_true", help="text: one document per line")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    parser.add_argument("--encoding", default="utf-8", help="encoding of the input files")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_tokenizer_args(parser)
    args = parser.parse_args(argv)
    # every setting and path first, then the tokenizer files, then the work
    check_preprocess_settings(
        workers=args.workers, encoding=args.encoding, json_keys=args.json_keys, names=FLAGS
    )
    check_tokenizer_args(args)
    check_inputs(args.input, args.output_prefix, args.json_keys, megatron_names=True)
    stats = preprocess(
        args.input,
        args.output_prefix,
        tokenizer_from_args(args),
        json_keys=args.json_keys,
        per_line=args.per_line,
        workers=args.workers,
        encoding=args.encoding,
        progress=not args.no_progress,
        megatron_names=True,
    )
    for key, prefix in stats.prefixes.items():
        docs, toks = stats.documents.get(key, 0), stats.tokens.get(key, 0)
        print(f"{prefix}.bin/.idx: {docs} documents, {toks} tokens (EOS included)")
    return 0


def main(argv=None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
