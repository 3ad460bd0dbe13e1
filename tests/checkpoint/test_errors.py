"""Bad input: one clear error, a non-zero exit from the CLI, and no output left behind."""

import collections
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from sedd_megatron.checkpoint import export_checkpoint, find_iteration, import_checkpoint
from sedd_megatron.errors import CheckpointError, ConfigError
from tests.checkpoint.conftest import convert
from tests.conftest import CONFORMANCE_DIR

SOURCE = CONFORMANCE_DIR / "tiny_absorb"


def plain_copy(tmp_path, edit_weights=None, edit_config=None):
    """A copy of tiny_absorb (safetensors only) with its weights and/or config edited."""
    out = tmp_path / "plain"
    out.mkdir()
    weights = load_file(SOURCE / "model.safetensors")
    config = json.loads((SOURCE / "config.json").read_text())
    if edit_weights:
        edit_weights(weights)
    if edit_config:
        edit_config(config)
    save_file(weights, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config))
    return out


def _set(section, key, value):
    return lambda config: (config[section] if section else config).__setitem__(key, value)


BAD_PLAIN = {
    "missing key": (dict(edit_weights=lambda w: w.pop("blocks.1.mlp.0.bias")), "missing keys"),
    "extra key": (
        dict(edit_weights=lambda w: w.__setitem__("blocks.9.extra", torch.zeros(1))),
        "unexpected keys",
    ),
    "shape mismatch": (
        dict(edit_weights=lambda w: w.__setitem__("blocks.0.attn_out.weight", torch.zeros(64, 63))),
        r"blocks.0.attn_out.weight has shape \(64, 63\)",
    ),
    "config disagrees with weights": (dict(edit_config=_set(None, "tokens", 999)), "vocab rows"),
    "unknown graph": (dict(edit_config=_set("graph", "type", "gaussian")), "graph.type"),
}


@pytest.mark.parametrize("case", BAD_PLAIN)
def test_bad_plain_checkpoint_is_refused(tmp_path, case):
    kwargs, message = BAD_PLAIN[case]
    plain = plain_copy(tmp_path, **kwargs)
    with pytest.raises((CheckpointError, ConfigError), match=message):
        import_checkpoint(plain, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


class Unsafe:
    pass


def test_pickle_that_needs_full_unpickling_is_refused(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(SOURCE / "config.json", plain)
    weights = collections.OrderedDict(load_file(SOURCE / "model.safetensors"))
    torch.save({**weights, "payload": Unsafe()}, plain / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load"):
        import_checkpoint(plain, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        import_checkpoint(SOURCE, tmp_path / "out")
    with pytest.raises(CheckpointError, match="already exists"):
        export_checkpoint(tmp_path, tmp_path / "out")


def fake_iteration(ckpt, number, complete=True):
    folder = ckpt / f"iter_{number:07d}"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    if complete:
        (folder / ".metadata").write_bytes(b"")
    return folder


def test_checkpoint_directories_without_a_complete_iteration(tmp_path):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        find_iteration(ckpt)
    ckpt.mkdir()
    with pytest.raises(CheckpointError, match="is empty"):
        find_iteration(ckpt)
    with pytest.raises(CheckpointError, match="is empty"):
        export_checkpoint(ckpt, tmp_path / "out")
    fake_iteration(ckpt, 4)
    fake_iteration(ckpt, 8, complete=False)
    with pytest.raises(
        CheckpointError, match=r"no latest_checkpointed_iteration.txt.*iter_0000004"
    ):
        find_iteration(ckpt)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("")
    with pytest.raises(CheckpointError, match="does not name an iteration"):
        find_iteration(ckpt)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("8")
    with pytest.raises(CheckpointError, match="iter_0000008 is incomplete"):
        export_checkpoint(ckpt, tmp_path / "out")
    with pytest.raises(CheckpointError, match="has no iter_0000012"):
        find_iteration(ckpt, 12)
    assert find_iteration(ckpt, 4).iteration == 4
    assert find_iteration(ckpt / "iter_0000004").path == ckpt / "iter_0000004"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_cli_reports_one_line_and_exits_non_zero(tmp_path):
    (tmp_path / "empty").mkdir()
    done = convert("export", "--load", str(tmp_path / "empty"), "--out", str(tmp_path / "a"),
                   check=False)  # fmt: skip
    assert done.returncode == 2
    assert "convert_checkpoint.py: error:" in done.stdout and "is empty" in done.stdout
    assert "Traceback" not in done.stdout
    plain = plain_copy(tmp_path, edit_config=_set("model", "n_heads", 3))
    done = convert("import", "--plain", str(plain), "--out", str(tmp_path / "b"), "--tp", "2",
                   check=False)  # fmt: skip
    assert done.returncode == 2 and "n_heads" in done.stdout and "Traceback" not in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "plain"]
