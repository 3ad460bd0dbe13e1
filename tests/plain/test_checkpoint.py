import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sedd_megatron.errors import CheckpointError, ConfigError
from sedd_megatron.plain import SEDD, reference_keys


class NotATensor:
    """Full unpickling of an instance would touch ``path`` (it must never happen)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def absorb_model(conformance_dir):
    return SEDD.from_pretrained(conformance_dir / "tiny_absorb")


@pytest.fixture
def checkpoint_copy(conformance_dir, tmp_path):
    """A writable copy of tiny_absorb with only config.json + model.safetensors."""
    directory = tmp_path / "ckpt"
    directory.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(conformance_dir / "tiny_absorb" / name, directory / name)
    return directory


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_round_trip_bit_identical(absorb_model, tmp_path):
    out = absorb_model.save_pretrained(tmp_path / "saved", pytorch_bin=True)
    assert listing(out) == [
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "sedd_checksums.json",
    ]
    assert listing(tmp_path) == ["saved", *(f"saved/{n}" for n in listing(out))]  # no leftovers
    keys = reference_keys(absorb_model.config)
    assert set(load_file(out / "model.safetensors")) == set(keys)
    assert list(torch.load(out / "pytorch_model.bin", weights_only=True)) == keys
    original = absorb_model.state_dict()
    for weights_name in ("model.safetensors", "pytorch_model.bin"):
        loaded = SEDD.from_pretrained(out, weights_name=weights_name)
        assert not loaded.training and loaded.config == absorb_model.config
        assert list(loaded.state_dict()) == keys
        for key, tensor in loaded.state_dict().items():
            assert torch.equal(tensor, original[key]), key


def test_round_trip_keeps_published_config(conformance_dir, tmp_path):
    config_dict = json.loads((conformance_dir / "tiny_uniform" / "config.json").read_text())
    config_dict["training"] = {"batch_size": 512, "ema": 0.9999}
    config_dict["model"]["score_strategy"] = 0
    directory = tmp_path / "uniform"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config_dict))
    shutil.copy(conformance_dir / "tiny_uniform" / "model.safetensors", directory)
    saved = SEDD.from_pretrained(directory).save_pretrained(tmp_path / "saved")
    assert json.loads((saved / "config.json").read_text()) == config_dict


def test_save_refuses_existing_directory(absorb_model, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        absorb_model.save_pretrained(target)
    assert listing(tmp_path) == ["out", "out/keep.txt"]
    absorb_model.save_pretrained(target, overwrite=True)
    saved = ["config.json", "model.safetensors", "sedd_checksums.json"]
    assert listing(target) == saved
    assert listing(tmp_path) == ["out", *(f"out/{name}" for name in saved)]
    empty = tmp_path / "empty"
    empty.mkdir()
    absorb_model.save_pretrained(empty)  # an existing empty directory is fine
    assert listing(empty) == saved


def test_failed_save_leaves_nothing(absorb_model, tmp_path, monkeypatch):
    from sedd_megatron.checksums import HashingWriter

    writes = []
    original_write = HashingWriter.write

    def write_until_full(self, data):  # the disk fills up in the middle of the weights
        writes.append(len(data))
        if len(writes) == 3:
            raise OSError("disk full")
        return original_write(self, data)

    monkeypatch.setattr(HashingWriter, "write", write_until_full)
    with pytest.raises(OSError, match="disk full"):
        absorb_model.save_pretrained(tmp_path / "out")
    assert listing(tmp_path) == []
    with pytest.raises(ValueError, match="nothing to write"):
        absorb_model.save_pretrained(tmp_path / "out", safetensors=False)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="not a local directory"):
        SEDD.from_pretrained("louaaron/sedd-small")
    with pytest.raises(CheckpointError, match="no config.json"):
        SEDD.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="tokens"):
        SEDD.from_pretrained(tmp_path)


def test_missing_weights(checkpoint_copy):
    (checkpoint_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        SEDD.from_pretrained(checkpoint_copy)
    with pytest.raises(CheckpointError, match="no pytorch_model.bin"):
        SEDD.from_pretrained(checkpoint_copy, weights_name="pytorch_model.bin")


def edit_weights(directory: Path, edit) -> None:
    state_dict = load_file(directory / "model.safetensors")
    edit(state_dict)
    save_file(state_dict, directory / "model.safetensors")


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda sd: sd.pop("blocks.1.attn_out.weight"),
            "missing keys \\[blocks.1.attn_out.weight\\]",
        ),
        (lambda sd: sd.update(extra=torch.zeros(1)), "unexpected keys \\[extra\\]"),
        (lambda sd: sd.update({"blocks.0.attn_qkv.bias": torch.zeros(192)}), "unexpected keys"),
        (
            lambda sd: sd.update({"blocks.0.mlp.0.weight": torch.zeros(128, 64)}),
            r"blocks.0.mlp.0.weight has shape \(128, 64\), expected \(256, 64\)",
        ),
        (lambda sd: sd.update({"rotary_emb.inv_freq": torch.ones(8)}), "rotary_emb.inv_freq"),
        (
            lambda sd: sd.update(
                {"output_layer.linear.bias": torch.zeros(1001, dtype=torch.int64)}
            ),
            "dtype",
        ),
    ],
)
def test_bad_weights_rejected(checkpoint_copy, edit, message):
    edit_weights(checkpoint_copy, edit)
    with pytest.raises(CheckpointError, match=message):
        SEDD.from_pretrained(checkpoint_copy)


def test_missing_inv_freq_is_rebuilt(checkpoint_copy, absorb_model):
    edit_weights(checkpoint_copy, lambda sd: sd.pop("rotary_emb.inv_freq"))
    loaded = SEDD.from_pretrained(checkpoint_copy)
    for key, tensor in absorb_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_config_weights_disagreement(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["graph"]["type"] = "uniform"
    config["model"]["scale_by_sigma"] = False
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="1001 vocab rows but the config .* needs 1000"):
        SEDD.from_pretrained(checkpoint_copy)
    config["graph"]["type"] = "masked"
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="graph.type"):
        SEDD.from_pretrained(checkpoint_copy)


def test_pickle_needing_full_unpickling_is_refused(checkpoint_copy, tmp_path):
    sentinel = tmp_path / "code_ran"
    (checkpoint_copy / "model.safetensors").unlink()
    state_dict = {"vocab_embed.embedding": torch.zeros(2), "payload": NotATensor(sentinel)}
    torch.save(state_dict, checkpoint_copy / "pytorch_model.bin")
    before = listing(tmp_path)
    with pytest.raises(CheckpointError, match="refusing to load .*full unpickling"):
        SEDD.from_pretrained(checkpoint_copy)
    assert not sentinel.exists()
    assert listing(tmp_path) == before


def test_non_state_dict_pickle_is_refused(checkpoint_copy):
    (checkpoint_copy / "model.safetensors").unlink()
    torch.save({"model": {"x": torch.zeros(1)}, "step": 3}, checkpoint_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="training checkpoint"):
        SEDD.from_pretrained(checkpoint_copy)
    (checkpoint_copy / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        SEDD.from_pretrained(checkpoint_copy)


def test_corrupt_safetensors(checkpoint_copy):
    (checkpoint_copy / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        SEDD.from_pretrained(checkpoint_copy)
