"""Shared bits of the data CLIs (``tools/preprocess_data.py``, ``tools/build_corpus.py``)."""

import os
import sys

from sedd_megatron.console import print_error, quiet_third_party
from sedd_megatron.errors import DataError


def run(main, argv=None) -> int:
    """Run ``main(argv)``; a :class:`DataError` becomes ``<prog>: error: ...`` and exit 2."""
    quiet_third_party()
    try:
        return main(argv)
    except DataError as e:
        print_error(os.path.basename(sys.argv[0]), str(e))
        return 2
