"""The up-front checks of ELBO and generative-perplexity settings (sedd_megatron.evaluation
.settings), the library entry points that make them, and the tools' use of them: each bad
setting is one EvalError naming it, raised before a model is opened or a file written."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from sedd_megatron.errors import EvalError
from sedd_megatron.evaluation import (
    StratifiedDesign,
    build_design,
    check_elbo_settings,
    check_eval_data,
    combine_replicates,
    default_replicates,
    elbo_report,
    evaluate_elbo,
    load_eval_data,
)
from sedd_megatron.evaluation.samples import read_samples
from sedd_megatron.evaluation.settings import check_gen_ppl_settings

from .conftest import REPO, load_tool

CI = "the confidence interval estimates each block's Monte-Carlo variance"


def test_default_replicates_always_give_an_interval():
    assert [default_replicates(n) for n in (10, 20, 16, 15, 12, 6, 9, 7, 2, 49)] == [
        10,
        10,
        8,
        5,
        4,
        2,
        3,
        7,
        2,
        7,
    ]
    for n in range(2, 60):
        r = default_replicates(n)
        assert r >= 2 and n % r == 0
        design = build_design("stratified", n, None, None, 8)
        assert design.replicates == r and design.evaluations == n


def test_default_tail_samples():
    """2% of the main term's evaluations, at least two (two replicates); 0 turns it off."""
    from sedd_megatron.evaluation.settings import default_tail_samples

    assert [default_tail_samples(n) for n in (1000, 100, 4, 2, 150, 5000)] == [20, 2, 2, 2, 3, 100]
    check_elbo_settings(tail_samples=0)
    check_elbo_settings(tail_samples=2, num_t_samples=4)


def test_design_counts_need_two_replicates():
    with pytest.raises(EvalError, match=rf"num_t_samples must be >= 2, got 1: {CI}"):
        check_elbo_settings(num_t_samples=1)
    with pytest.raises(EvalError, match=rf"replicates must be >= 2, got 1: {CI}"):
        check_elbo_settings(design="importance", num_t_samples=8, replicates=1)
    with pytest.raises(EvalError, match=r"replicates \(3\) must divide num_t_samples \(8\)"):
        check_elbo_settings(design="stratified", num_t_samples=8, replicates=3)
    with pytest.raises(EvalError, match="unknown t-design 'sobol'"):
        check_elbo_settings(design="sobol")
    with pytest.raises(EvalError, match=r"--num-t-samples must be positive, got 0"):
        check_elbo_settings(num_t_samples=0, names={"num_t_samples": "--num-t-samples"})
    # why: one replicate per block leaves the interval undefined (NaN), which is what the
    # check prevents; two give a finite one
    assert np.isnan(combine_replicates([np.array([1.0])]).half_width(0.95))
    assert np.isfinite(combine_replicates([np.array([1.0, 2.0])]).half_width(0.95))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(level=1.5), r"level \(the confidence level\) must be in \(0, 1\)"),
        (dict(level=0.0), r"must be in \(0, 1\)"),
        (dict(level=float("nan")), r"must be in \(0, 1\)"),
        (dict(t_eps=0.0), r"t_eps must be in \(0, 1\)"),
        (dict(batch_size=0), "batch_size must be positive, got 0"),
        (dict(seq_length=-1), "seq_length must be positive, got -1"),
        (dict(max_blocks=0), "max_blocks must be positive, got 0"),
        (dict(compare=[]), "compare: no designs given"),
        (dict(compare=["mc", "mc"]), "a design is named twice"),
        (dict(compare=["mc", "stratified"], num_t_samples=7, replicates=2), "must divide"),
        (dict(tail_samples=1), r"tail_samples must be 0 \(off\) or >= 2, got 1"),
        (dict(tail_samples=-1), "tail_samples must be non-negative, got -1"),
        (dict(tail_samples=2.5), "tail_samples must be an integer"),
        (dict(compare=["mc"], tail_samples=4), r"compares the designs of the \[t_eps, 1\] term"),
    ],
)
def test_bad_elbo_settings(kwargs, message):
    with pytest.raises(EvalError, match=message):
        check_elbo_settings(**kwargs)


def test_library_entry_points_check_first(tmp_path):
    blocks = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(EvalError, match="num_t_samples must be >= 2"):
        evaluate_elbo(None, blocks, num_t_samples=1)  # before the model is touched
    with pytest.raises(EvalError, match=r"level .* must be in \(0, 1\)"):
        evaluate_elbo(None, blocks, num_t_samples=4, level=1.0)

    with pytest.raises(EvalError, match="design 'stratified' has 1 replicate"):
        evaluate_elbo(None, blocks, design=StratifiedDesign(1, 4))
    text = tmp_path / "t.txt"
    text.write_text("some text")
    missing_model = str(tmp_path / "no-model")  # opened only after every check
    with pytest.raises(EvalError, match=r"json_path: .* is a directory"):
        elbo_report(missing_model, str(text), json_path=tmp_path, num_t_samples=2)
    with pytest.raises(EvalError, match=r"plot_path: directory .*/t\.txt does not exist"):
        elbo_report(missing_model, str(text), plot_path=text / "p.png", num_t_samples=2)
    with pytest.raises(EvalError, match="evaluation data not found"):
        elbo_report(missing_model, str(tmp_path / "none.txt"), num_t_samples=2)
    with pytest.raises(EvalError, match="model not found"):
        elbo_report(missing_model, str(text), num_t_samples=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def _indexed(prefix, docs):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(np.asarray(doc, dtype=np.uint16), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def test_eval_data_checks(tmp_path):
    check_eval_data("ptb-valid")
    with pytest.raises(EvalError, match="unknown PTB split 'dev'"):
        check_eval_data("ptb-dev")
    with pytest.raises(EvalError, match="unknown detokenizer 'moses'"):
        check_eval_data("ptb-test", detokenizer="moses")
    prefix = tmp_path / "d"
    _indexed(prefix, [list(range(10)), [900, 901, 902, 903, 1200, 5]])
    check_eval_data(str(prefix))
    with pytest.raises(EvalError, match=r"one file of an indexed dataset: pass its prefix .*/d$"):
        check_eval_data(f"{prefix}.idx")
    (tmp_path / "half.bin").write_bytes(b"\0\0")
    with pytest.raises(EvalError, match=r"incomplete: .*half\.idx not found"):
        check_eval_data(str(tmp_path / "half"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(EvalError, match="no documents"):
        check_eval_data(str(tmp_path / "empty.txt"))
    # token ids: only the blocks to be evaluated, before any is read
    data = load_eval_data(str(prefix), 4, max_blocks=3, vocab_size=1000)
    assert data.blocks.flatten().tolist() == list(range(10)) + [900, 901]
    with pytest.raises(EvalError, match=r"token ids in \[0, 1200\], outside the vocabulary"):
        load_eval_data(str(prefix), 4, vocab_size=1000)
    # text under a tokenizer with more tokens than the model has
    (tmp_path / "t.txt").write_text("hello")

    class Wide:
        vocab_size, eos_id = 50257, 50256

        def encode(self, text):
            return [1]

    with pytest.raises(EvalError, match="has 50257 tokens, more than the model's vocabulary"):
        load_eval_data(str(tmp_path / "t.txt"), 4, tokenizer=Wide(), vocab_size=1000)


def test_gen_ppl_settings_and_samples(tmp_path):
    check_gen_ppl_settings(lm="smollm2", device="cuda:1")
    for kwargs, message in [
        (dict(batch_size=0), "batch_size must be positive"),
        (dict(max_length=1), "max_length must be >= 2, got 1"),
        (dict(max_samples=0), "max_samples must be positive"),
        (dict(device="gpu"), "unknown device 'gpu'"),
        (dict(lm=str(tmp_path / "m.gguf")), "GGUF file not found"),
        (dict(lm=str(tmp_path / "none")), "causal LM not found"),
        (dict(lm=str(tmp_path)), r"not a Hugging Face model directory \(no config\.json\)"),
    ]:
        with pytest.raises(EvalError, match=message):
            check_gen_ppl_settings(**kwargs)
    path = tmp_path / "s.jsonl"
    for line, message in [
        ('{"text": "a", "tokens": [1, "x"]}', r"s\.jsonl:1: 'tokens' must be a list"),
        ('{"text": "a", "tokens": [1, -1]}', "non-negative"),
        ('{"text": "a", "settings": 3}', "'settings' must be a JSON object"),
        ("[1, 2]", "no string field 'text'"),
    ]:
        path.write_text(line + "\n")
        with pytest.raises(EvalError, match=message):
            read_samples(path)
    path.write_bytes(b'{"text": "\xff"}\n')
    with pytest.raises(EvalError, match="not valid UTF-8"):
        read_samples(path)
    with pytest.raises(EvalError, match="not a regular file"):
        read_samples(tmp_path)


def test_elbo_cli_checks_before_work(tmp_path, capsys):
    """In process: each bad setting is one line naming its flag; nothing is written."""
    tool = load_tool("eval_elbo_sedd")
    (tmp_path / "out").mkdir()
    base = ["--load", str(tmp_path / "no-model"), "--data", "ptb-test", "--no-progress"]
    for extra, message in [
        (["--level", "1.5"], r"eval_elbo_sedd\.py: error: --level \(the confidence level\)"),
        (["--num-t-samples", "1"], "--num-t-samples must be >= 2"),
        (["--output", str(tmp_path / "out")], r"--output: .*/out is a directory"),
        (["--compare", "mc,importance", "--plot", "p.png"], "cannot be used with --compare"),
        (["--save-draws"], "--save-draws stores the draws in the --output JSON"),
        (["--iteration=-1"], "--iteration must be non-negative"),
        ([], "model not found"),
    ]:
        assert tool.main(base + extra) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_tools_reject_bad_settings_before_importing_torch(tmp_path):
    """The checks need neither torch nor the model: the tools fail without importing torch."""
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"text": "a"}) + "\n")
    probe = (
        "import runpy, sys; sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "print('torch' in sys.modules, code)\n"
    )
    for argv in [
        ["tools/eval_elbo_sedd.py", "--load", str(tmp_path), "--level", "2"],
        ["tools/eval_gen_ppl.py", "--samples", str(samples), "--max-length", "1"],
    ]:
        done = subprocess.run(
            [sys.executable, "-c", probe, *argv], cwd=REPO, capture_output=True, text=True
        )
        assert done.stdout.split() == ["False", "2"], done.stdout + done.stderr


def test_sample_counts_that_cannot_fit_in_memory_are_one_error(monkeypatch):
    """A block's draws are held at once: more than the machine's memory is refused up front
    (it was an allocation traceback), naming the flag and the memory."""
    from sedd_megatron.datasets import checks
    from sedd_megatron.evaluation.settings import check_elbo_settings

    monkeypatch.setattr(checks, "physical_memory", lambda: 10**9)
    names = {"tail_samples": "--tail-samples", "num_t_samples": "--num-t-samples"}
    with pytest.raises(EvalError, match=r"--tail-samples 100000000 would need at least 4\.8 GB"):
        check_elbo_settings(num_t_samples=10, tail_samples=10**8, seq_length=1, names=names)
    with pytest.raises(EvalError, match=r"--num-t-samples 1000000 would need at least 8\.23 GB"):
        check_elbo_settings(num_t_samples=10**6, seq_length=1024, names=names)
    check_elbo_settings(num_t_samples=10**5, tail_samples=10**5, seq_length=1024, names=names)
