"""Library functions never start a distributed world nor install the CPU shim behind the
caller's back: a plain model runs as is; a Megatron checkpoint without a world is one clear
error (the entry point starts the world with ``sedd_megatron.runtime.world``)."""

import pytest
import torch

from sedd_megatron.errors import CheckpointError
from sedd_megatron.evaluation import elbo_report
from sedd_megatron.runtime import is_cpu_megatron_enabled
from sedd_megatron.sampling import sample_texts
from tests.conftest import CONFORMANCE_DIR


def process_state():
    return (
        torch._C._len_torch_function_stack(),
        len(torch.overrides._get_current_function_mode_stack()),
        is_cpu_megatron_enabled(),
        torch.distributed.is_initialized(),
    )


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    return path


@pytest.fixture
def megatron_checkpoint(tmp_path):
    """The directory shape of a pretrain_sedd.py checkpoint (never loaded: no world)."""
    ckpt = tmp_path / "ckpt"
    iteration = ckpt / "iter_0000004"
    iteration.mkdir(parents=True)
    (iteration / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    (iteration / ".metadata").write_bytes(b"")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("4")
    return ckpt


def test_plain_model_leaves_no_torch_function_mode(gpt2_model_dir, text_file):
    before = process_state()
    texts = sample_texts(CONFORMANCE_DIR / "tiny_absorb", num=1, steps=2, seed=0)
    assert len(texts) == 1
    report = elbo_report(
        gpt2_model_dir, str(text_file), num_t_samples=2, max_blocks=1, progress=False
    )
    assert report["blocks"] == 1
    assert process_state() == before


def test_megatron_source_without_a_world_is_one_clear_error(megatron_checkpoint, text_file):
    before = process_state()
    with pytest.raises(CheckpointError, match="needs an initialised Megatron world"):
        sample_texts(megatron_checkpoint, num=1, steps=2)
    with pytest.raises(CheckpointError, match="needs an initialised Megatron world"):
        elbo_report(megatron_checkpoint, str(text_file), num_t_samples=2, progress=False)
    assert process_state() == before
