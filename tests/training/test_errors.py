"""Bad flags, configs and data paths: one clear error each, non-zero exit, no traceback."""

import pytest

from tests.training.conftest import TINY, data_flags, pretrain


@pytest.fixture
def bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("num-layers: [1, 2\n")
    return path


CASES = {
    "unknown graph": (["--sedd-graph", "gaussian"], "invalid choice"),
    "missing config": (["--config", "/nonexistent/sedd.yaml"], "no such file"),
    "uniform with sigma scaling": (
        ["--sedd-graph", "uniform", "--sedd-scale-by-sigma"],
        "only defined for --sedd-graph absorb",
    ),
    "gated MLP": (["--swiglu"], "GELU"),
    "warm-up longer than training": (["--lr-warmup-iters", "50"], "--lr-warmup-iters"),
    "context parallel split": (["--context-parallel-size", "3"], "divisible by 2 x"),
    "fp8 without TE": (["--fp8-format", "hybrid"], "needs Transformer Engine"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_flag_gives_one_clear_error(corpus, name):
    extra, message = CASES[name]
    out = pretrain([*TINY, *data_flags(corpus), "--train-iters", "10", *extra], check=False)
    assert out.returncode != 0
    assert message in out.stdout
    assert "Traceback" not in out.stdout


def test_bad_yaml(corpus, bad_yaml):
    out = pretrain([*TINY, *data_flags(corpus), "--train-iters", "10", "--config", str(bad_yaml)],
                   check=False)  # fmt: skip
    assert out.returncode != 0 and "not valid YAML" in out.stdout
    assert "Traceback" not in out.stdout


def test_missing_data_prefix(tmp_path):
    out = pretrain([*TINY, "--train-iters", "10", "--data-path", str(tmp_path / "nothing")],
                   check=False)  # fmt: skip
    assert out.returncode != 0
    assert "nothing.bin" in out.stdout and "preprocess_data.py" in out.stdout
    assert "Traceback" not in out.stdout
