"""The diffusion package is pure PyTorch: importing it must not pull in Megatron."""

import subprocess
import sys

CHECK = """
import sys
import sedd_megatron.diffusion
bad = [m for m in sys.modules if m.split(".")[0] in ("megatron", "transformer_engine", "apex")]
assert not bad, bad
assert "sedd_megatron.models" not in sys.modules
"""


def test_import_loads_no_megatron():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
