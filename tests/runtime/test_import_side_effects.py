"""Importing the package is side-effect free, and enable_cpu_megatron() is a no-op with CUDA.

Both run in a fresh interpreter: the pytest process may already hold Megatron or patches.
"""

import subprocess
import sys

from tests.launch import REPO_ROOT, worker_env

IMPORT_IS_INERT = """
import sys, torch
cuda_before = {name: getattr(torch.cuda, name) for name in dir(torch.cuda)}
type_before = torch.Tensor.type
import sedd_megatron, sedd_megatron.runtime
from sedd_megatron.runtime import cpu, distributed, norm, upstream_fixes
assert not [m for m in sys.modules if m == "megatron" or m.startswith("megatron.")]
assert {n: getattr(torch.cuda, n) for n in dir(torch.cuda)} == cuda_before
assert torch.cuda.current_device is cuda_before["current_device"]
assert torch.Tensor.type is type_before
assert torch.overrides._get_current_function_mode_stack() == []
assert not sedd_megatron.runtime.is_cpu_megatron_enabled()
"""

NO_OP_WITH_CUDA = """
import sys, torch
torch.cuda.is_available = lambda: True  # pretend this machine has a GPU
current_device = torch.cuda.current_device
from sedd_megatron.runtime import enable_cpu_megatron, is_cpu_megatron_enabled
assert enable_cpu_megatron() is False
assert torch.cuda.current_device is current_device
assert torch.overrides._get_current_function_mode_stack() == []
assert not is_cpu_megatron_enabled()
assert not [m for m in sys.modules if m.startswith("megatron")]
"""


def run_snippet(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_package_neither_imports_megatron_nor_patches_torch():
    run_snippet(IMPORT_IS_INERT)


def test_enable_cpu_megatron_is_a_no_op_when_cuda_is_available():
    run_snippet(NO_OP_WITH_CUDA)
