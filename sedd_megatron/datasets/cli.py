"""Shared bits of the data CLIs (``tools/preprocess_data.py``, ``tools/build_corpus.py``)."""

import logging
import sys
import warnings

from sedd_megatron.errors import DataError


def quiet_megatron_import() -> None:
    """Hide the CPU-only import chatter of torch and Megatron-Core (no CUDA, no TE/Apex)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="megatron")


def run(main, argv=None) -> int:
    """Run ``main(argv)``; a :class:`DataError` becomes ``error: ...`` on stderr and exit 2."""
    quiet_megatron_import()
    try:
        return main(argv)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
