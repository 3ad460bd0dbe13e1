"""Session fixtures: a TP=2/PP=2 round trip of the conformance models, and a short
pretrain_sedd.py run that resumes from the imported tiny_absorb checkpoint."""

import sys
from pathlib import Path

import pytest

from tests.launch import REPO_ROOT, parse_result, run_command, run_torchrun

WORKERS = Path(__file__).parent / "workers"
CONVERT = str(REPO_ROOT / "tools" / "convert_checkpoint.py")

# tiny_absorb's architecture (tests/data/conformance/tiny_absorb/config.json) as pretrain flags.
TINY_ABSORB = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
    "--seq-length", "32", "--max-position-embeddings", "32", "--sedd-cond-dim", "32",
    "--sedd-graph", "absorb", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000",
    "--micro-batch-size", "2", "--global-batch-size", "2", "--mock-data",
    "--lr", "1e-3", "--lr-warmup-iters", "1", "--hidden-dropout", "0.0", "--ema-decay", "0.99",
    "--log-interval", "1", "--eval-iters", "1",
]  # fmt: skip
TRAIN_ITERS = 3


def convert(*args: str, check: bool = True):
    """Run tools/convert_checkpoint.py in a fresh process."""
    return run_command([sys.executable, CONVERT, *args], timeout=240, check=check)


@pytest.fixture(scope="session")
def roundtrip(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("roundtrip")
    done = run_torchrun(WORKERS / "roundtrip.py", 4, [str(out), "--tp", "2", "--pp", "2"], 300)
    return parse_result(done.stdout)


@pytest.fixture(scope="session")
def trained(roundtrip, tmp_path_factory) -> dict:
    """pretrain_sedd.py --load <imported tiny_absorb (TP2/PP2)> at TP1, a few steps, --save."""
    save = tmp_path_factory.mktemp("trained") / "ckpt"
    done = run_command(
        [sys.executable, str(REPO_ROOT / "pretrain_sedd.py"), *TINY_ABSORB,
         "--load", roundtrip["tiny_absorb"]["megatron"], "--save", str(save),
         "--train-iters", str(TRAIN_ITERS), "--save-interval", str(TRAIN_ITERS),
         "--eval-interval", str(TRAIN_ITERS)],
        timeout=300,
    )  # fmt: skip
    return {"save": save, "output": done.stdout}
