"""Megatron's architecture flags under SEDD (``training.architecture``), through Megatron's own
parser: each refused flag is refused with its reason, each supported one survives the trip
published config -> pretrain flags -> Megatron's validated args -> published config, and the
README's table lists exactly the module's rows."""

import re
import sys

import pytest
import torch

from sedd_megatron.checkpoint import configs
from sedd_megatron.checkpoint.importer import parse_pretrain_args
from sedd_megatron.errors import CheckpointError
from sedd_megatron.plain import SEDD, SEDDConfig
from sedd_megatron.training.architecture import REFUSED, SUPPORTED
from tests.launch import REPO_ROOT
from tests.training.conftest import pretrain

TINY = SEDDConfig(
    tokens=1000, graph="absorb", hidden_size=64, cond_dim=32, length=16, n_blocks=2, n_heads=4
)
BACKBONES = {
    "reference": {},
    "dims": dict(ffn_hidden_size=96, kv_channels=24, rotary_base=500000.0, norm_eps=1e-6),
    "llama": dict(norm="rmsnorm", mlp="swiglu", ffn_hidden_size=160, n_kv_heads=2, qk_norm=True),
}
# One command line per REFUSED row (the rows' order), each refused by that row.
REFUSED_ARGV = [
    ["--position-embedding-type", "learned_absolute"],
    ["--rotary-percent", "0.5"],
    ["--apply-layernorm-1p"],
    ["--squared-relu"],
    ["--swiglu", "--glu-linear-offset", "1.0"],
    ["--add-qkv-bias"],
    ["--num-experts", "4"],
    ["--qk-l2-norm"],
    ["--apply-residual-connection-post-layernorm"],
    ["--mtp-num-layers", "1"],
]


def parse(argv, tmp_path):
    base = configs.pretrain_argv(TINY)
    return parse_pretrain_args([*base, "--train-iters", "4", *argv], save=tmp_path / "ckpt")


def test_every_refused_row_has_a_command_line():
    assert len(REFUSED_ARGV) == len(REFUSED)


@pytest.mark.parametrize("row", range(len(REFUSED)), ids=[r.flags[:30] for r in REFUSED])
def test_refused_flags_are_refused_before_training_with_the_reason(row, tmp_path):
    with pytest.raises(CheckpointError) as info:
        parse(REFUSED_ARGV[row], tmp_path)
    assert REFUSED[row].why in str(info.value)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_survives_megatrons_parser(name, tmp_path):
    """config -> pretrain_argv -> Megatron's parse + validate -> config_from_args: the same
    backbone (and the same model: equal state-dict shapes)."""
    config = SEDDConfig(**{**TINY.__dict__, "extra": {}, **BACKBONES[name]})
    args = parse_pretrain_args(configs.pretrain_argv(config), save=tmp_path / "ckpt")
    again = configs.config_from_args(args, config.tokens)
    fields = ("ffn_hidden_size", "n_kv_heads", "kv_channels", "rotary_base", "norm", "norm_eps",
              "mlp", "qk_norm", "hidden_size", "n_heads", "n_blocks")  # fmt: skip
    assert {f: getattr(again, f) for f in fields} == {f: getattr(config, f) for f in fields}


def test_swiglu_takes_megatrons_default_width(tmp_path):
    """--swiglu without --ffn-hidden-size: Megatron's 8/3 x hidden rounded down to 64s (128 for
    hidden 64), which the published config records."""
    argv = [a for a in configs.pretrain_argv(TINY) if a not in ("--ffn-hidden-size", "256")]
    args = parse_pretrain_args([*argv, "--swiglu"], save=tmp_path / "ckpt")
    assert configs.config_from_args(args, 1000).ffn_hidden_size == 128


def _table_rows(section: str) -> list[str]:
    """The first cells of the README table under the architecture section's ``section`` line."""
    readme = (REPO_ROOT / "README.md").read_text()
    part = readme.split("## Model architectures", 1)[1].split("\n## ", 1)[0]
    block = part.split(section, 1)[1].split("\n\n", 2)[1]
    rows = [line for line in block.splitlines() if line.startswith("|")][2:]
    return [re.sub(r"`", "", row.split("|")[1]).strip() for row in rows]


def test_readme_table_lists_the_modules_rows():
    assert _table_rows("Supported") == [row.flags for row in SUPPORTED]
    assert _table_rows("Refused") == [row.flags for row in REFUSED]


LLAMA_CONFIG = REPO_ROOT / "configs" / "sedd_small_llama_absorb.yaml"


def test_llama_config_has_sedd_smalls_parameter_count(tmp_path):
    """Within 2 % of SEDD-small (the same vocabulary, width and conditioning)."""
    from sedd_megatron.training.arguments import expand_config_argv

    argv = expand_config_argv(["--config", str(LLAMA_CONFIG)])
    args = parse_pretrain_args(argv, save=tmp_path / "ckpt")
    llama = configs.config_from_args(args, 50257)
    small = SEDDConfig(
        tokens=50257, graph="absorb", hidden_size=768, cond_dim=128, length=1024, n_blocks=12,
        n_heads=12,
    )  # fmt: skip
    assert (llama.norm, llama.mlp, llama.n_kv_heads, llama.qk_norm) == (
        "rmsnorm", "swiglu", 4, True
    )  # fmt: skip
    assert llama.ffn_width == 2048  # 8/3 x 768, a multiple of 64

    def count(config):
        with torch.device("meta"):
            return sum(p.numel() for p in SEDD(config).parameters())

    assert abs(count(llama) / count(small) - 1) < 0.02


@pytest.mark.skipif(sys.platform != "linux", reason="CPU training run")
def test_llama_config_trains_on_cpu():
    """The config itself (sizes, bf16, distributed optimizer) for three iterations on a short
    sequence: the loss stays finite and no iteration is skipped."""
    result = pretrain(
        ["--config", str(LLAMA_CONFIG), "--mock-data", "--seq-length", "64",
         "--max-position-embeddings", "64", "--micro-batch-size", "1", "--global-batch-size",
         "1", "--train-iters", "3", "--lr-warmup-iters", "1", "--eval-iters", "0",
         "--log-interval", "1"],
        timeout=300,
    )  # fmt: skip
    assert "number of skipped iterations:   0" in result.stdout
    summary = result.stdout.split("SEDD training summary: ", 1)[1].splitlines()[0]
    assert '"iterations": 3' in summary and "nan" not in summary.lower()


def test_resume_names_each_changed_backbone_flag():
    """A checkpoint's backbone against a run's: every differing option by its Megatron flag."""
    from types import SimpleNamespace

    from sedd_megatron.training.resume import differing_settings

    saved = SimpleNamespace(swiglu=False, normalization="LayerNorm", layernorm_epsilon=1e-5,
                            qk_layernorm=False, group_query_attention=False, num_query_groups=4,
                            rotary_base=10000, kv_channels=16)  # fmt: skip
    run = SimpleNamespace(swiglu=True, normalization="RMSNorm", layernorm_epsilon=1e-6,
                          qk_layernorm=True, group_query_attention=True, num_query_groups=2,
                          rotary_base=500000, kv_channels=24)  # fmt: skip
    flags = [flag for flag, _, _ in differing_settings(saved, run)]
    assert sorted(flags) == sorted([
        "--swiglu", "--normalization", "--norm-epsilon", "--qk-layernorm",
        "--group-query-attention", "--num-query-groups", "--rotary-base", "--kv-channels",
    ])  # fmt: skip
