"""Launch worker scripts in fresh processes for tests (torchrun for multi-process ones).

Workers run in their own processes so that Megatron's global state and the CPU patches of
``enable_cpu_megatron()`` never leak into the pytest process. gloo collective mismatches hang
rather than fail, so every launch has a timeout: on expiry the whole process group is killed
and the captured output (with faulthandler tracebacks) is raised.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Workers print one line ``RESULT_PREFIX + json`` with values for the test to check.
RESULT_PREFIX = "RESULT "


class WorkerError(RuntimeError):
    """A worker process failed or timed out; the message holds its output."""


def free_port() -> int:
    """A TCP port that was free a moment ago (for torchrun's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for workers: one thread per process, the repo importable, tracebacks on."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.update(extra or {})
    return env


def run_command(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a new session; kill its process group on timeout (raise WorkerError)."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=worker_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)  # faulthandler dumps every thread's traceback
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        raise WorkerError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}\n{output}") from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, output, "")
    if check and proc.returncode != 0:
        raise WorkerError(f"exit code {proc.returncode}: {' '.join(cmd)}\n{output}")
    return result


def run_python(
    script: Path, args: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python script *args`` as one process."""
    return run_command([sys.executable, str(script), *args], timeout, env)


def run_torchrun(
    script: Path,
    nproc: int,
    args: list[str],
    timeout: float,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``script`` under ``torchrun --standalone --nproc_per_node=nproc``.

    ``--standalone`` rendezvous on ``localhost:0``, i.e. a port the OS picks free, so concurrent
    launches never collide."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(script),
        *args,
    ]
    return run_command(cmd, timeout, env)


def parse_result(output: str) -> dict:
    """The JSON dict a worker printed after :data:`RESULT_PREFIX` (the last such line)."""
    lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise WorkerError(f"worker printed no {RESULT_PREFIX!r} line:\n{output}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])
