"""sedd_megatron.console: one-line usage errors, quiet third-party warnings with a switch; every
entry point's --help (exit 0, its own options shown) through the real CLI; and what a real
pretrain_sedd.py run prints (Megatron's progress, no torch log records)."""

import argparse
import logging
import re
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from sedd_megatron import console
from tests.launch import REPO_ROOT, worker_env
from tests.training.conftest import TINY, pretrain


def test_usage_error_is_one_line(capsys):
    parser = console.ArgumentParser(prog="tool.py")
    parser.add_argument("--steps", type=int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--steps", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "tool.py: error: argument --steps: invalid int value: 'x' (see --help)\n"


def test_subcommand_errors_name_the_script(capsys):
    parser = console.ArgumentParser(prog="convert.py")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("export").add_argument("--out", required=True)
    with pytest.raises(SystemExit):
        parser.parse_args(["export"])
    assert capsys.readouterr().err.startswith("convert.py: error: the following arguments")


def test_one_line_errors_on_a_plain_parser(capsys):
    parser = console.one_line_errors(argparse.ArgumentParser(prog="big.py"))
    parser.add_argument("--n", type=int, required=True)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert capsys.readouterr().err.count("\n") == 1


def test_fail_joins_lines(capsys):
    with pytest.raises(SystemExit) as exit_info:
        console.fail("x.py", "first\nsecond", status=3)
    assert exit_info.value.code == 3
    assert capsys.readouterr().err == "x.py: error: first second\n"


# ---------------------------------------------------- former spellings, kept for one release
#: (tool, its parse function's module, former spelling, current spelling, the note)
SPELLINGS = [
    ("generate_sedd.py", "generate", ["M", "--steps", "2"], ["--load", "M", "--steps", "2"],
     "a positional MODEL is deprecated, use --load MODEL"),
    ("convert_checkpoint.py", "convert", ["import", "--plain", "M", "--out", "O"],
     ["import", "--load", "M", "--out", "O"], "--plain is deprecated, use --load"),
    ("convert_checkpoint.py", "convert", ["verify", "M"], ["verify", "--load", "M"],
     "a positional MODEL is deprecated, use --load MODEL"),
    ("eval_elbo_sedd.py", "eval_elbo", ["--load", "M", "--json-key", "body"],
     ["--load", "M", "--json-keys", "body"], "--json-key is deprecated, use --json-keys"),
]  # fmt: skip


def _parse(module: str, argv: list[str]) -> argparse.Namespace:
    import importlib

    cli = importlib.import_module(f"sedd_megatron.cli.{module}")
    if module == "eval_elbo":
        return cli.build_parser().parse_args(argv)
    return cli.parse_args(argv)


@pytest.fixture
def as_tool(monkeypatch):
    """Parse as the tool does (its name in sys.argv[0]), leaving the process's hooks as found."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with warnings.catch_warnings():

        def use(tool):
            monkeypatch.setattr(sys, "argv", [tool])

        yield use


@pytest.mark.parametrize("tool, module, old, new, note", SPELLINGS)
def test_former_spelling_parses_the_same_with_a_one_line_note(
    tool, module, old, new, note, as_tool, capsys
):
    as_tool(tool)
    current = vars(_parse(module, new))
    assert capsys.readouterr().err == ""
    former = vars(_parse(module, old))
    assert capsys.readouterr().err == f"{tool}: note: {note}\n"
    assert current.pop("load") == former.pop("load") == "M"
    assert current == former


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("generate", ["A", "--load", "B"], "name the model once, with --load MODEL"),
        ("generate", ["--steps", "2"], "the following arguments are required: --load"),
        ("convert", ["import", "--out", "O"], "the following arguments are required: --load"),
        ("convert", ["verify"], "the following arguments are required: --load"),
    ],
)
def test_model_named_twice_or_not_at_all_is_a_usage_error(module, argv, message, as_tool, capsys):
    as_tool("tool.py")
    with pytest.raises(SystemExit) as exit_info:
        _parse(module, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f": error: {message} (see --help)\n") and err.count("\n") == 1, err


@pytest.mark.parametrize("switch", ["", "1"])
def test_quiet_hides_warnings_unless_asked(monkeypatch, switch):
    monkeypatch.setenv(console.SHOW_WARNINGS, switch)
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        console.quiet_third_party()
        warnings.warn_explicit("theirs", UserWarning, "lib.py", 1, module="megatron.core.x")
        warnings.warn_explicit("ours", UserWarning, "s.py", 1, module="sedd_megatron.sampling")
    shown = sorted(str(w.message) for w in caught)
    assert shown == (["ours", "theirs"] if switch else [])


@pytest.fixture
def logger_levels():
    """Put back the levels the test changes."""
    names = ("", "torch._dynamo", *console._CHATTY_LOGGERS)
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def test_after_start_up_third_party_info_stays_out(monkeypatch, logger_levels):
    """Root at INFO (as Megatron sets it): third-party loggers pass WARNING, not INFO; Megatron's
    INFO records pass; a level configured since quieting (TORCH_LOGS=+dynamo) is kept."""
    monkeypatch.setenv(console.SHOW_WARNINGS, "")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    with warnings.catch_warnings():
        console.quiet_third_party()
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("torch._dynamo").setLevel(logging.DEBUG)
    console.restore_third_party_logging()
    for name in ("torch", "torch.distributed.distributed_c10d", "torch._inductor.compile_fx",
                 "torch.utils.cpp_extension", "triton", "transformer_engine"):  # fmt: skip
        logger = logging.getLogger(name)
        assert logger.isEnabledFor(logging.WARNING), name
        assert not logger.isEnabledFor(logging.INFO), name
    assert logging.getLogger("megatron.core.timers").isEnabledFor(logging.INFO)
    assert logging.getLogger("torch._dynamo.eval_frame").isEnabledFor(logging.DEBUG)


# a record of torch's own log handler (torch._logging), e.g.
# "[rank1]:I1207 09:22:19.464000 4055 torch/_utils_internal.py:147] ..."
TORCH_RECORD = re.compile(r"^(\[rank\d+\]:)?([DIWEC])\d{4} [\d:.]+ +\d+ \S+:\d+\] ")
PYTHON_WARNING = re.compile(r"\b\w*Warning: ")


@pytest.mark.distributed
@pytest.mark.parametrize("nproc, switch", [(1, ""), (2, ""), (1, "1")])
def test_training_console(nproc, switch):
    """A real run prints Megatron's progress and ours, no torch log records and no warnings;
    SEDD_SHOW_WARNINGS=1 shows the warnings again (torch's INFO records stay off: its default)."""
    args = [*TINY, "--mock-data", "--micro-batch-size", str(4 // nproc), "--train-iters", "3",
            "--lr-warmup-iters", "1", "--eval-interval", "3"]  # fmt: skip
    env = {console.SHOW_WARNINGS: switch, "PYTHONWARNINGS": ""}
    lines = pretrain(args, nproc=nproc, env=env).stdout.splitlines()
    records = [line for line in lines if TORCH_RECORD.match(line)]
    assert not [r for r in records if TORCH_RECORD.match(r)[2] in "DI"], "\n".join(records[:20])
    shown = [line for line in lines if PYTHON_WARNING.search(line)]
    iterations = [line for line in lines if re.search(r"\] iteration +\d+/ +3 \|", line)]
    assert len(iterations) == 3, "\n".join(lines[-40:])
    assert "> building train, validation, and test datasets ..." in lines
    assert any(line.startswith("SEDD training summary: ") for line in lines)
    if switch:
        assert shown, "SEDD_SHOW_WARNINGS=1 showed no warning"
    else:
        assert records == [] and shown == [], "\n".join([*records, *shown][:20])


ENTRY_POINTS = {  # script -> a string its --help must show (its own options)
    "pretrain_sedd.py": "SEDD (score entropy discrete diffusion):",
    "tools/generate_sedd.py": "--predictor",
    "tools/eval_elbo_sedd.py": "--num-t-samples",
    "tools/eval_gen_ppl.py": "--samples",
    "tools/convert_checkpoint.py": "{export,import,verify}",
    "tools/preprocess_data.py": "--output-prefix",
    "tools/build_corpus.py": "--max-train-bytes",
}


def _help(script):
    env = worker_env()
    env.pop("PYTHONWARNINGS")
    return subprocess.run(
        [sys.executable, script, "--help"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_every_entry_point_has_help():
    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(ENTRY_POINTS, pool.map(_help, ENTRY_POINTS), strict=True))
    for script, shown in ENTRY_POINTS.items():
        done = results[script]
        assert done.returncode == 0, f"{script} --help: exit {done.returncode}\n{done.stderr}"
        assert shown in done.stdout, f"{script} --help does not show {shown!r}"
        assert done.stderr.strip() == "", f"{script} --help wrote to stderr:\n{done.stderr}"


def test_warnings_switch_shows_import_warnings():
    """The same bad flag: one line by default, the import chatter with SEDD_SHOW_WARNINGS=1."""
    argv = [sys.executable, "pretrain_sedd.py", "--mock-data", "--no-such-flag"]
    lines = {}
    for switch in ("", "1"):
        env = worker_env({console.SHOW_WARNINGS: switch})
        env.pop("PYTHONWARNINGS")
        done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 2
        lines[switch] = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines[""]) == 1 and "unrecognized arguments: --no-such-flag" in lines[""][0]
    assert len(lines["1"]) > 1 and lines["1"][-1] == lines[""][0]


# ------------------------------------------------------------------------------- Ctrl-C
MOCK_PRETRAIN = [*TINY, "--mock-data", "--train-iters", "50", "--eval-iters", "0"]
#: Every entry point that imports torch, with arguments that get it that far ({tmp}: a fresh
#: directory for outputs, {in}: one holding s.jsonl); build_corpus.py without downloads never
#: imports torch.
INTERRUPTIBLE = {
    "pretrain_sedd.py": MOCK_PRETRAIN,
    "tools/generate_sedd.py": ["--load", "tests/data/conformance/tiny_absorb", "--steps", "2"],
    "tools/eval_elbo_sedd.py": ["--load", "tests/data/conformance/tiny_absorb", "--data",
                                "README.md", "--output", "{tmp}/elbo.json"],
    "tools/eval_gen_ppl.py": ["--samples", "{in}/s.jsonl", "--output", "{tmp}/ppl.json"],
    "tools/convert_checkpoint.py": ["export", "--load", "x", "--out", "{tmp}/out"],
    "tools/preprocess_data.py": ["--input", "README.md", "--output-prefix", "{tmp}/tokens"],
    "examples/quickstart.py": ["--help"],
    "benchmarks/pretrain_ar_baseline.py": MOCK_PRETRAIN,
}  # fmt: skip


def _torch_is_loading(pid: int) -> bool:
    """Whether the process has begun loading torch's shared libraries (Linux)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return any("libtorch" in line or "torch/_C" in line for line in maps)
    except OSError:
        return False


def _interrupt(script: str, args: list[str], when: str, tmp=None) -> tuple[int, list[str]]:
    """Start ``script``; send SIGINT while torch imports ("start-up") or once it has printed
    its first line of output ("later"); returns (exit status, non-blank stderr lines)."""
    import signal
    import time

    if tmp is not None:
        args = [a.replace("{tmp}", str(tmp / "out")).replace("{in}", str(tmp / "in")) for a in args]
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        cwd=REPO_ROOT,
        env=worker_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job starts with SIGINT ignored, and Python then installs no
        # KeyboardInterrupt handler: give the child the default, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        if when == "start-up":
            while not _torch_is_loading(proc.pid):
                assert proc.poll() is None, f"{script} ended before torch loaded"
                assert time.monotonic() < deadline, f"{script}: torch never loaded"
                time.sleep(0.005)
        else:
            assert proc.stdout.readline(), f"{script} printed nothing"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, [line for line in err.splitlines() if line.strip()]


def test_ctrl_c_at_start_up_is_one_line_and_status_130(tmp_path):
    """SIGINT while torch imports, for every entry point: exit status 130 and the one line
    '<script>: interrupted' (it was a KeyboardInterrupt traceback); nothing written."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "in" / "s.jsonl").write_text('{"text": "a b c", "settings": {"steps": 8}}\n')
    with ThreadPoolExecutor(3) as pool:
        runs = {
            s: pool.submit(_interrupt, s, a, "start-up", tmp_path) for s, a in INTERRUPTIBLE.items()
        }
        results = {s: f.result() for s, f in runs.items()}
    assert not list((tmp_path / "out").iterdir())
    wrong = {
        script: got
        for script, got in results.items()
        if got != (130, [f"{script.rsplit('/', 1)[-1]}: interrupted"])
    }
    assert not wrong, wrong


def test_ctrl_c_while_training_is_one_line_and_status_130():
    """SIGINT once pretrain_sedd.py has started Megatron (its first output line)."""
    status, lines = _interrupt("pretrain_sedd.py", MOCK_PRETRAIN, "later")
    assert (status, lines) == (130, ["pretrain_sedd.py: interrupted"])
