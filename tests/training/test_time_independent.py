"""--sedd-time-conditioning none end to end: a few pretrain_sedd.py steps on mock data, export
to the published layout (config.json says so; the plain twin agrees with the Megatron model:
--verify), import back (weights unchanged) and generate with reused scores."""

import json
import sys

import pytest
from safetensors.torch import load_file

from tests.checkpoint.conftest import TINY_ABSORB, convert
from tests.launch import REPO_ROOT, run_command
from tests.training.conftest import pretrain, read_metrics

pytestmark = pytest.mark.distributed


def test_pretrain_export_import_generate(tmp_path):
    metrics, save = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    pretrain([*TINY_ABSORB, "--sedd-time-conditioning", "none", "--train-iters", "3",
              "--eval-interval", "3", "--save", str(save), "--save-interval", "3",
              "--sedd-metrics-file", str(metrics)])  # fmt: skip
    steps = read_metrics(metrics)
    assert sorted(steps) == [1, 2, 3]
    assert all(s["loss"] == s["loss"] and s["loss"] < float("inf") for s in steps.values())

    plain = tmp_path / "plain"
    convert("export", "--load", str(save), "--raw", "--out", str(plain), "--verify")
    config = json.loads((plain / "config.json").read_text())
    assert config["model"]["time_conditioning"] == "none"
    weights = load_file(plain / "model.safetensors")
    assert "cond_map.cond" in weights and not any(k.startswith("sigma_map") for k in weights)

    imported, again = tmp_path / "imported", tmp_path / "again"
    convert("import", "--plain", str(plain), "--out", str(imported), "--tp", "2", "--verify")
    convert("export", "--load", str(imported), "--out", str(again))
    assert json.loads((again / "config.json").read_text())["model"] == config["model"]
    round_trip = load_file(again / "model.safetensors")
    assert list(round_trip) == list(weights)
    assert all(round_trip[k].equal(weights[k]) for k in weights)

    out = run_command(
        [sys.executable, str(REPO_ROOT / "tools" / "generate_sedd.py"), "--load", str(plain),
         "--no-detokenize", "--no-progress", "--steps", "64", "--num-samples", "2",
         "--seq-length", "8", "--output", str(tmp_path / "samples.jsonl")],
        timeout=120,
    )  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["settings"]["reuse_scores"] is True
    assert "reused scores: the model evaluated" in out.stdout
