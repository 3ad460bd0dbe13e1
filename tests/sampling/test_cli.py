"""tools/generate_sedd.py end to end on a conformance plain directory, and sample_texts."""

import importlib.util
import json
import sys

import pytest

from sedd_megatron.sampling import sample_texts
from tests.conftest import CONFORMANCE_DIR
from tests.launch import REPO_ROOT, run_command, run_torchrun

TOOL = REPO_ROOT / "tools" / "generate_sedd.py"
MODEL = CONFORMANCE_DIR / "tiny_absorb"


def generate(*args):
    """The CLI in a fresh process."""
    return run_command([sys.executable, str(TOOL), str(MODEL), *args], 120)


def cli_main(*args, model=MODEL) -> int:
    """The CLI's main() in this process (plain backend: no Megatron state is created)."""
    spec = importlib.util.spec_from_file_location("generate_sedd", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(model), *args])


def test_cli_writes_records(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"template": "1 2 [MASK:3] 4", "suffix": "9", "id": "a"}\n{}\n')
    out = tmp_path / "out" / "samples.jsonl"
    args = ["--no-detokenize", "--prompts", str(prompts), "--num-samples", "2", "--steps", "4"]
    generate(*args, "--batch-size", "3", "--seed", "5", "--output", str(out), "--no-progress")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sample_index"] for r in records] == [0, 1, 2, 3]
    first = records[0]
    assert first["prompt"] == {"template": "1 2 [MASK:3] 4", "suffix": "9", "id": "a"}
    assert first["tokens"][:2] == [1, 2] and first["tokens"][5] == 4 and first["tokens"][-1] == 9
    assert len(first["tokens"]) == 32 and first["text"] is None and first["seed"] == 5
    assert first["settings"]["predictor"] == "analytic" and first["settings"]["steps"] == 4
    assert list(out.parent.iterdir()) == [out]  # atomic write: no temporary file left

    # the same seed and sample index give the same sample with another batch size
    assert cli_main(*args, "--batch-size", "1", "--seed", "5", "--no-progress") == 0
    alone = capsys.readouterr().out
    assert [json.loads(line)["tokens"] for line in alone.splitlines()] == [
        r["tokens"] for r in records
    ]


def test_cli_text_and_bad_prompt(capsys):
    assert cli_main("--steps", "2", "--prefix", "The", "--seq-length", "8", "--no-progress") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tokens"][0] == 464 and record["text"].startswith("The")
    assert len(record["tokens"]) == 8
    assert cli_main("--template", "a [MASK:0]") == 2
    message = "error: hole '[MASK:0]' at character 2 of the template has length 0"
    assert message in capsys.readouterr().err
    assert cli_main("--prompts", "x.jsonl", "--prefix", "a") == 2
    assert "--prompts cannot be combined" in capsys.readouterr().err


def test_sample_texts_in_process():
    texts = sample_texts(MODEL, num=2, steps=3, seed=1)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    infilled = sample_texts(MODEL, num=2, template="The [MASK:3] of the [MASK:2].", steps=3)
    assert all(t.startswith("The") and " of the" in t for t in infilled)


@pytest.mark.distributed
def test_cli_data_parallel_megatron_matches_plain(tmp_path, capsys):
    """torchrun x2 (SEDDModel, DP = 2: the replicas split the batches) writes the same records
    as the plain twin in one process."""
    model = CONFORMANCE_DIR / "tiny_uniform"
    args = ["--no-detokenize", "--prefix", "3 4", "--num-samples", "3", "--steps", "3"]
    out = tmp_path / "dp.jsonl"
    flags = ["--backend", "megatron", "--batch-size", "1", "--output", str(out), "--no-progress"]
    run_torchrun(TOOL, 2, [str(model), *args, *flags], timeout=180)
    assert cli_main(*args, "--no-progress", model=model) == 0
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tokens"] for r in records] == [r["tokens"] for r in plain]
    assert [r["sample_index"] for r in records] == [0, 1, 2]
