#!/usr/bin/env python
"""Tokenize text/JSONL files into a Megatron indexed dataset.

The program is :func:`sedd_megatron.cli.preprocess.main` (``--help``); an installed wheel has it
as ``sedd-preprocess``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without pip install

from sedd_megatron.cli.preprocess import main

if __name__ == "__main__":
    sys.exit(main())
