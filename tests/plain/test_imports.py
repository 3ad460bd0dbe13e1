import subprocess
import sys

CHECK = """
import sys
import sedd_megatron.plain
loaded = sorted(m for m in sys.modules if m == "megatron" or m.startswith("megatron."))
assert not loaded, loaded
print("ok")
"""


def test_plain_package_imports_no_megatron():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
