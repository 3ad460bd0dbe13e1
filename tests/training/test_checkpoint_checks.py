"""A pretrain_sedd.py save gets its checksum manifest; open_model refuses a flipped bit in it;
a resume that legitimately changes the schedule goes through with Megatron's override flag.
(The refusals through the command lines are in the bad-input table, tests/bad_inputs.)"""

import json
import shutil
import sys

import pytest

from sedd_megatron import checksums
from sedd_megatron.errors import CheckpointError
from tests.launch import REPO_ROOT, run_command
from tests.test_checksums import flip_bit
from tests.training.conftest import pretrain

FLAGS = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
    "--seq-length", "32", "--max-position-embeddings", "32", "--sedd-cond-dim", "32",
    "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000", "--mock-data",
    "--micro-batch-size", "2", "--global-batch-size", "2", "--lr", "1e-3",
    "--lr-warmup-iters", "1", "--eval-iters", "0", "--eval-interval", "100", "--log-interval", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 2-iteration pretrain_sedd.py --save directory (read-only: copy it to change it)."""
    ckpt = tmp_path_factory.mktemp("checks") / "ckpt"
    pretrain([*FLAGS, "--train-iters", "2", "--save", str(ckpt), "--save-interval", "2"])
    return ckpt


def test_pretrain_save_writes_the_manifest(saved):
    folder = saved / "iter_0000002"
    listed = {e["path"] for e in checksums.read_manifest(folder)[1]}
    on_disk = {p.name for p in folder.iterdir()} - {checksums.MANIFEST_NAME}
    assert listed == on_disk and "__0_0.distcp" in listed and ".metadata" in listed
    assert checksums.verify_directory(folder)


def test_open_model_refuses_a_flipped_bit(saved, tmp_path):
    from sedd_megatron.checkpoint import open_model

    copy = shutil.copytree(saved, tmp_path / "ckpt")
    flip_bit(copy / "iter_0000002" / "__0_0.distcp")
    with pytest.raises(CheckpointError, match=r"iter_0000002/__0_0\.distcp: checksum mismatch"):
        open_model(copy, "megatron")
    # skipped: it gets as far as needing a Megatron world (none in this process)
    with pytest.raises(CheckpointError, match="needs an initialised Megatron world"):
        open_model(copy, "megatron", verify_checksums=False)


def test_resume_with_more_iterations_and_the_override_flag(saved, tmp_path):
    copy = shutil.copytree(saved, tmp_path / "ckpt")
    metrics = tmp_path / "metrics.jsonl"
    override = ["--override-opt_param-scheduler", "--sedd-metrics-file", str(metrics)]
    done = pretrain([*FLAGS, "--train-iters", "3", "--load", str(copy), *override])
    steps = [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()]
    assert steps == [3], done.stdout[-2000:]  # resumed at 2, one more step


def _tool(script: str, *args: str, check: bool = False):
    return run_command([sys.executable, str(REPO_ROOT / "tools" / script), *args], 240, check=check)


def test_verify_command_good_and_without_manifest(saved, tmp_path):
    done = _tool("convert_checkpoint.py", "verify", "--load", str(saved), check=True)
    assert done.stdout.strip().splitlines()[-1] == (
        f"ok: 3 files of {saved}/iter_0000002 match their checksums"
    )
    copy = shutil.copytree(saved, tmp_path / "ckpt")
    (copy / "iter_0000002" / checksums.MANIFEST_NAME).unlink()
    done = _tool("convert_checkpoint.py", "verify", "--load", str(copy))
    assert done.returncode == 1
    assert "iter_0000002: no sedd_checksums.json" in done.stdout.strip().splitlines()[-1]


def test_generate_skips_the_check_on_request_and_notes_a_missing_manifest(saved, tmp_path):
    copy = shutil.copytree(saved, tmp_path / "ckpt")
    flip_bit(copy / "iter_0000002" / "__0_0.distcp")
    args = [
        "--load",
        str(copy),
        "--no-detokenize",
        "--num-samples",
        "1",
        "--steps",
        "2",
        "--no-progress",
    ]
    done = _tool("generate_sedd.py", *args, "--no-verify-checksums", check=True)
    assert '"tokens"' in done.stdout and "checksum" not in done.stdout
    (copy / "iter_0000002" / checksums.MANIFEST_NAME).unlink()
    done = _tool("generate_sedd.py", *args, check=True)
    notes = [line for line in done.stdout.splitlines() if "sedd_checksums.json" in line]
    assert notes == [
        f"note: {copy}/iter_0000002 has no sedd_checksums.json (saved before checksums or by "
        "another tool): its content is not verified"
    ]
