#!/usr/bin/env python
"""Sample text from a SEDD model.

The program is :func:`sedd_megatron.cli.generate.main` (``--help``); an installed wheel has it
as ``sedd-generate``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without pip install

from sedd_megatron.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
