"""Published layout -> Megatron release checkpoint (TP=2, PP=2) -> published layout."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sedd_megatron.plain import SEDD
from tests.conftest import CONFORMANCE_DIR, CONFORMANCE_MODELS

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("name", CONFORMANCE_MODELS)
def test_tp2_pp2_round_trip_is_bit_identical(roundtrip, name):
    result = roundtrip[name]
    original = load_file(CONFORMANCE_DIR / name / "model.safetensors")
    exported = load_file(f"{result['plain']}/model.safetensors")
    assert list(exported) == list(original)  # exactly the reference keys, in order
    for key, tensor in original.items():
        assert exported[key].dtype == torch.float32
        assert torch.equal(exported[key], tensor), key
    source = json.loads((CONFORMANCE_DIR / name / "config.json").read_text())
    assert json.loads(open(f"{result['plain']}/config.json").read()) == source
    assert result["import_difference"] <= 1e-5 and result["export_difference"] <= 1e-5
    assert result["export_ema"] is True and result["export_iteration"] == 0
    SEDD.from_pretrained(result["plain"])  # the plain twin loads it strictly


def test_imported_release_checkpoint_layout(roundtrip):
    ckpt = roundtrip["tiny_absorb"]["megatron"]
    assert open(f"{ckpt}/latest_checkpointed_iteration.txt").read() == "release"
    from sedd_megatron.checkpoint import read_checkpoint_args

    args = read_checkpoint_args(ckpt)
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (2, 2)
    assert (args.num_layers, args.hidden_size, args.sedd_graph, args.vocab_size) == (
        2, 64, "absorb", 1000,
    )  # fmt: skip
    assert args.save == ckpt


def test_missing_ema_weights_are_reported(roundtrip):
    assert "no EMA weights" in roundtrip["no_ema_error"]
    assert roundtrip["no_ema_default_loads_ema"] is False
