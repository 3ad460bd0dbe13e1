"""The lm-eval model ``sedd`` through lm-eval's real command line (tools/lm_eval_sedd.py) and
its library, offline on local task files (tests/data/lm_eval): multiple choice, generation
with a stop string, rolling perplexity; PTB rolling perplexity against the ELBO harness."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "data" / "lm_eval"
CONFORMANCE = REPO / "tests" / "data" / "conformance" / "tiny_absorb"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_cli(args, tmp_path):
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "tools" / "lm_eval_sedd.py"), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def read_outputs(out: Path):
    results = sorted(out.rglob("results_*.json"))
    assert len(results) == 1, list(out.rglob("*"))
    samples = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name[len("samples_") :].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(results[0].read_text()), samples


def cli(model_dir, tmp_path, *extra):
    out = tmp_path / "out"
    args = [
        "--model", "sedd",
        "--model_args", f"pretrained={model_dir},num_t_samples=10,steps=8",
        "--tasks", "sedd_ids_mc,sedd_ids_gen,sedd_ids_rolling",
        "--include_path", str(TASKS),
        "--batch_size", "128",
        "--output_path", str(out),
        "--log_samples",
        *extra,
    ]  # fmt: skip
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_outputs(out)


SIZES = {"sedd_ids_mc": 24, "sedd_ids_gen": 6, "sedd_ids_rolling": 4}  # documents per task


def check_common(results, samples, limit=None):
    n = {task: min(size, limit or size) for task, size in SIZES.items()}
    for task in SIZES:
        assert task in results["results"] and len(samples[task]) == n[task]
    assert results["config"]["model"] == "sedd"
    assert "exact_match,strip" in results["results"]["sedd_ids_gen"]
    sedd = results["config"]["sedd"]
    assert sedd["num_t_samples"] == 10 and sedd["confidence_level"] == 0.95
    # every loglikelihood request (4 choices per doc) and every rolling document has its interval
    bounds = sedd["bounds"]
    assert len(bounds) == 4 * n["sedd_ids_mc"] + n["sedd_ids_rolling"]
    for b in bounds:
        lo, hi = b["ci_loglikelihood"]
        assert lo < b["loglikelihood"] < hi < 0
    # generation: at most max_gen_toks tokens, cut before the stop string " 0"
    for s in samples["sedd_ids_gen"]:
        text = s["resps"][0][0]
        assert " 0 " not in f"{text} " and len(text.split()) <= 5, text
    # rolling: the bound of each document is in the samples and in the JSON's bounds
    rolling = [b for b in bounds if "windows" in b]
    assert [float(s["resps"][0][0]) for s in samples["sedd_ids_rolling"]] == pytest.approx(
        [b["loglikelihood"] for b in rolling]
    )


def test_cli_on_the_conformance_model(tmp_path):
    results, samples = cli(CONFORMANCE, tmp_path, "--limit", "4")
    check_common(results, samples, 4)
    # one window per 30-token document (the model's length is 32)
    assert all(b["windows"] == 1 for b in results["config"]["sedd"]["bounds"] if "windows" in b)


def test_cli_on_a_trained_model(tmp_path, progression_models):
    _, trained = progression_models
    results, samples = cli(trained, tmp_path)
    check_common(results, samples)
    # the true continuation beats its three shuffles almost always
    assert results["results"]["sedd_ids_mc"]["acc,none"] >= 0.9
    # 30-token documents at length 12: windows of 12, 12, 6
    assert all(b["windows"] == 3 for b in results["config"]["sedd"]["bounds"] if "windows" in b)


def evaluate(model_dir, tasks, limit=None, log_samples=False, **model_args):
    """lm-eval's simple_evaluate in this process on the local tasks only (no task index)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from sedd_megatron.lm_harness import SEDDLM

    lm = SEDDLM(pretrained=str(model_dir), **model_args)
    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    results = simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=log_samples
    )
    return lm, results


def test_untrained_model_does_not_rank(progression_models, monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)
    untrained, _ = progression_models
    _, results = evaluate(untrained, ["sedd_ids_mc"], num_t_samples=10, batch_size=128)
    assert results["results"]["sedd_ids_mc"]["acc,none"] <= 0.5  # chance: 0.25


def test_ptb_rolling_equals_the_elbo_harness(gpt2_model_dir, monkeypatch):
    """The rolling bound of a PTB text (191 tokens + EOS = 6 windows of 32) is the ELBO
    harness's complete bound on the same text: the same blocks, the same draws."""
    from sedd_megatron.evaluation import elbo_report

    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)
    settings = dict(num_t_samples=20, design="importance", seed=4, batch_size=64)
    lm, results = evaluate(gpt2_model_dir, ["sedd_ptb_rolling"], **settings)
    (bound,) = lm.bounds
    assert bound["windows"] == 6 and bound["tokens"] == 192
    report = elbo_report(
        str(gpt2_model_dir), str(TASKS / "ptb_rolling.jsonl"), progress=False, **settings
    )
    assert report["data"]["tokens_dropped"] == 0 and report["blocks"] == 6
    complete = report["complete"]
    lo, hi = complete["ci_nats_per_token"]
    ours = -bound["loglikelihood"] / 192
    assert lo <= ours <= hi
    assert ours == pytest.approx(complete["nats_per_token"], rel=1e-9)
    # lm-eval's word perplexity is exp(-loglikelihood / words) of that same number
    words = len(json.loads((TASKS / "ptb_rolling.jsonl").read_text())["text"].split())
    ppl = results["results"]["sedd_ptb_rolling"]["word_perplexity,none"]
    assert ppl == pytest.approx(torch.tensor(-bound["loglikelihood"] / words).exp().item())


def test_is_greedy_is_the_one_step_denoise():
    from sedd_megatron.lm_harness import SEDDLM

    lm = SEDDLM(pretrained=str(CONFORMANCE), num_t_samples=4, tail_samples=0)
    context = [5, 17, 300, 41]
    x = torch.tensor([context + [lm.model.graph.mask_id] * 3])
    sigma_1 = lm.model.noise(torch.tensor(1.0, dtype=torch.float64))[0].float()
    pred = lm.model.full_log_score(x, sigma_1[None])[0, 4:, :1000].argmax(-1).tolist()
    other = [(pred[0] + 1) % 1000, *pred[1:]]

    class Req:
        def __init__(self, *args):
            self.args = args

    text = " ".join(map(str, context))
    out = lm.loglikelihood([Req(text, " " + " ".join(map(str, c))) for c in (pred, other)])
    assert [g for _, g in out] == [True, False]


@pytest.mark.parametrize(
    "model_args, message",
    [
        ("num_t_samples=10", "pretrained=DIR is required"),
        ("pretrained=/nonexistent/x", "not found: /nonexistent/x"),
        ("pretrained={m},design=fancy", "design must be one of"),
        ("pretrained={m},num_t_samples=ten", "num_t_samples must be an integer"),
        ("pretrained={m},bogus=1", "unknown model arg(s) for sedd: bogus"),
        ("pretrained={m},dtype=float8", "dtype must be one of"),
    ],
)
def test_bad_model_args(model_args, message, capsys, monkeypatch):
    """One clear error line and exit 2, before any task is read."""
    from tests.evaluation.conftest import load_tool

    monkeypatch.chdir(REPO)
    tool = load_tool("lm_eval_sedd")
    args = ["--model", "sedd", "--model_args", model_args.format(m=CONFORMANCE)]
    code = tool.main([*args, "--tasks", "sedd_ids_mc", "--include_path", str(TASKS)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("lm_eval_sedd.py: error: ") and message in err[-1]


def test_generate_until_stops_at_the_stop_string():
    """The sampler's draws are keyed by (seed, request index): the same request with a stop
    string made of its own third token returns the first two tokens."""
    from sedd_megatron.lm_harness import SEDDLM

    lm = SEDDLM(pretrained=str(CONFORMANCE), steps=4)

    class Req:
        def __init__(self, *args):
            self.args = args

    context = "5 17 300 41"
    (free,) = lm.generate_until([Req(context, {"until": [], "max_gen_toks": 5})])
    tokens = free.split()
    assert len(tokens) == 5 and free.startswith(" ")
    stop = f" {tokens[2]}"
    assert stop not in " " + " ".join(tokens[:2])
    (cut,) = lm.generate_until([Req(context, {"until": [stop], "max_gen_toks": 5})])
    assert cut == " " + " ".join(tokens[:2])
    # an empty context: max_gen_toks tokens from the unconditional sampler
    (none,) = lm.generate_until([Req("", {"until": [], "max_gen_toks": 5})])
    assert len(none.split()) == 5


@pytest.mark.distributed
def test_cli_at_tp2_matches_the_plain_backend(tmp_path, monkeypatch):
    """torchrun, 2 ranks, TP=2: every rank makes the same calls, one results file, the same
    bounds as the plain model (same draws; rounding only) and the same generations."""
    from tests.launch import free_port

    out = tmp_path / "tp2"
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [
        str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port()),
        str(REPO / "tools" / "lm_eval_sedd.py"), "--model", "sedd",
        "--model_args", f"pretrained={CONFORMANCE},tp=2,num_t_samples=10,steps=4",
        "--tasks", "sedd_ids_mc,sedd_ids_gen", "--include_path", str(TASKS), "--limit", "2",
        "--batch_size", "64", "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results, samples = read_outputs(out)
    assert results["config"]["sedd"]["backend"] == "megatron"

    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)
    lm, plain = evaluate(
        CONFORMANCE, ["sedd_ids_mc", "sedd_ids_gen"], num_t_samples=10, steps=4, batch_size=64,
        limit=2, log_samples=True,
    )  # fmt: skip
    ours = [b["loglikelihood"] for b in results["config"]["sedd"]["bounds"]]
    assert ours == pytest.approx([b["loglikelihood"] for b in lm.bounds], rel=1e-6)
    gen = [s["resps"] for s in samples["sedd_ids_gen"]]
    assert gen == [s["resps"] for s in plain["samples"]["sedd_ids_gen"]]


def test_bfloat16_runs_under_autocast():
    """dtype=bfloat16 (plain backend): the same draws in lower precision, a nearby bound."""
    from sedd_megatron.lm_harness import SEDDLM

    class Req:
        def __init__(self, *args):
            self.args = args

    reqs = [Req("1 2 3", " 4 5"), Req("7", " 8 9 10")]
    out = {
        dtype: SEDDLM(pretrained=str(CONFORMANCE), dtype=dtype, num_t_samples=10).loglikelihood(
            reqs
        )
        for dtype in ("float32", "bfloat16")
    }
    for (a, _), (b, _) in zip(out["float32"], out["bfloat16"], strict=True):
        assert a != b and b == pytest.approx(a, rel=1e-2)
