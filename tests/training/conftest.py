"""Helpers for the pretrain_sedd.py tests: a tiny model's flags and a CLI runner (the real-text
``corpus`` fixture is in tests/conftest.py)."""

import json
import sys
from pathlib import Path

from tests.launch import REPO_ROOT, run_command

PRETRAIN = str(REPO_ROOT / "pretrain_sedd.py")

# A tiny SEDD that trains in seconds on CPU (GPT-2 vocabulary; dropout 0 so runs are comparable).
TINY = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
    "--seq-length", "64", "--max-position-embeddings", "64", "--sedd-cond-dim", "32",
    "--tokenizer-type", "NullTokenizer", "--vocab-size", "50257",
    "--micro-batch-size", "4", "--global-batch-size", "4",
    "--lr", "1e-3", "--lr-warmup-iters", "2", "--hidden-dropout", "0.0",
    "--log-interval", "1", "--eval-iters", "1", "--ema-decay", "0.99",
]  # fmt: skip


def data_flags(corpus: dict) -> list[str]:
    return [
        "--train-data-path", corpus["train"],
        "--valid-data-path", corpus["valid"],
        "--test-data-path", corpus["test"],
    ]  # fmt: skip


def pretrain(
    args: list[str],
    nproc: int = 1,
    timeout: float = 300,
    check: bool = True,
    env: dict[str, str] | None = None,
):
    """Run pretrain_sedd.py (python for one process, torchrun otherwise); returns the result.

    ``env``: extra environment variables (``SEDD_TRITON_ON_CPU=1`` for the fused kernels)."""
    if nproc == 1:
        cmd = [sys.executable, PRETRAIN, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", PRETRAIN, *args]  # fmt: skip
    return run_command(cmd, timeout, env=env, check=check)


def read_metrics(path: Path) -> dict[int, dict]:
    """Per-step metrics; a step run twice (after a restart) keeps its last record."""
    records = {}
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        records[record["iteration"]] = record
    return records
