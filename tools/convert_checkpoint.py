#!/usr/bin/env python
"""Convert SEDD checkpoints between pretrain_sedd.py and the published layout.

The program is :func:`sedd_megatron.cli.convert.main` (``--help``); an installed wheel has it
as ``sedd-convert``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without pip install

from sedd_megatron.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
