"""sedd_megatron.console: one-line usage errors, quiet third-party warnings with a switch; and
every entry point's --help (exit 0, its own options shown) through the real CLI."""

import argparse
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from sedd_megatron import console
from tests.launch import REPO_ROOT, worker_env


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


ENTRY_POINTS = {  # script -> a string its --help must show (its own options)
    "pretrain_sedd.py": "SEDD (score entropy discrete diffusion):",
    "tools/generate_sedd.py": "--predictor",
    "tools/eval_elbo_sedd.py": "--num-t-samples",
    "tools/eval_gen_ppl.py": "--samples",
    "tools/convert_checkpoint.py": "{export,import}",
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
