"""Export of a pretrain_sedd.py checkpoint that resumed from an imported one."""

import re

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from sedd_megatron.models.sedd import state_dict_adapter as adapter
from sedd_megatron.plain import SEDD
from tests.checkpoint.conftest import TRAIN_ITERS, convert
from tests.conftest import CONFORMANCE_DIR

pytestmark = pytest.mark.distributed


def test_imported_checkpoint_resumes_in_pretrain(trained):
    output = trained["output"]
    assert "loading release distributed checkpoint" in output
    assert "will not load any checkpoints" not in output
    steps = re.findall(r" iteration\s+(\d+)/\s*(\d+) \|", output)
    assert [int(i) for i, _ in steps] == list(range(1, TRAIN_ITERS + 1))
    tracker = trained["save"] / "latest_checkpointed_iteration.txt"
    assert tracker.read_text().strip() == str(TRAIN_ITERS)


def saved_tensors(iteration_dir, tmp_path) -> dict[str, torch.Tensor]:
    """Model and EMA tensors of a torch_dist iteration, read without a process group."""
    out = tmp_path / "dcp.pt"
    dcp_to_torch_save(iteration_dir, out)
    state = torch.load(out, weights_only=False)  # written just now by this test
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def as_reference(saved: dict, prefix: str, n_blocks: int, n_heads: int, rows: int) -> dict:
    """Reference-layout tensors from a TP=1 checkpoint's stacked-layer Megatron tensors."""
    out = {}
    for ref_key, (mg_key, kind) in adapter._GLOBAL.items():
        if prefix + mg_key not in saved:  # cond_map.cond: time-independent models only
            continue
        tensor = saved[prefix + mg_key]
        out[ref_key] = tensor[:rows] if kind == "vocab" else tensor
    for ref_suffix, (mg_suffix, kind) in adapter._BLOCK.items():
        if f"{prefix}decoder.layers.{mg_suffix}" not in saved:  # QK norm: its models only
            continue
        stacked = saved[f"{prefix}decoder.layers.{mg_suffix}"]
        for i in range(n_blocks):
            tensor = stacked[i]
            if kind == "qkv":  # Megatron rows [heads][3][d] -> reference rows [3][heads][d]
                tensor = tensor.view(n_heads, 3, -1, tensor.shape[-1]).transpose(0, 1)
                tensor = tensor.reshape(-1, tensor.shape[-1])
            out[f"blocks.{i}.{ref_suffix}"] = tensor
    return out


def test_export_ema_and_raw_match_the_checkpoint_and_the_megatron_model(trained, tmp_path):
    ema_dir, raw_dir = tmp_path / "ema", tmp_path / "raw"
    done = convert("export", "--load", str(trained["save"]), "--out", str(ema_dir), "--verify")
    assert f"iteration {TRAIN_ITERS} (EMA weights)" in done.stdout
    difference = float(
        re.search(r"max relative difference of the log-scores (\S+)", done.stdout)[1]
    )
    assert difference <= 1e-5  # exported plain twin vs load_sedd_model's Megatron model
    convert("export", "--load", str(trained["save"]), "--raw", "--pytorch-bin",
            "--out", str(raw_dir))  # fmt: skip

    ema, raw = load_file(ema_dir / "model.safetensors"), load_file(raw_dir / "model.safetensors")
    assert torch.load(raw_dir / "pytorch_model.bin", weights_only=True).keys() == raw.keys()
    config = SEDD.from_pretrained(ema_dir).config
    SEDD.from_pretrained(raw_dir)
    assert (config.tokens, config.graph, config.length, config.noise_type) == (
        1000, "absorb", 32, "loglinear",
    )  # fmt: skip
    assert config.extra["training"]["ema"] == 0.99 and config.extra["optim"]["lr"] == 1e-3

    saved = saved_tensors(trained["save"] / f"iter_{TRAIN_ITERS:07d}", tmp_path)
    shape = dict(n_blocks=2, n_heads=4, rows=1001)
    for exported, prefix in ((ema, "ema."), (raw, "")):
        expected = as_reference(saved, prefix, **shape)
        for key, tensor in expected.items():
            assert torch.equal(exported[key], tensor), (prefix, key)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)

    # Three Adam steps (lr 1e-3) from the imported weights: close to them, not equal.
    original = load_file(CONFORMANCE_DIR / "tiny_absorb" / "model.safetensors")
    moved = max((raw[k] - original[k]).abs().max().item() for k in original)
    assert 0 < moved < 1e-2
