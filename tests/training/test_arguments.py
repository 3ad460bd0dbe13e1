"""--config YAML expansion and SEDD flag validation (in process, no Megatron start-up)."""

import argparse
from types import SimpleNamespace

import pytest

from sedd_megatron.errors import ConfigError
from sedd_megatron.training.arguments import expand_config_argv, validate_sedd_args


def test_yaml_flags_come_first_so_the_command_line_wins(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "num_layers: 12\nbf16: true\nsedd-scale-by-sigma: false\nsplit: '98,1,1'\n"
        "data-path: [0.3, a, 0.7, b]\nexit-interval: null\n"
    )
    argv = expand_config_argv(["--lr", "1e-3", "--config", str(config), "--num-layers", "2"])
    assert argv == [
        "--num-layers", "12", "--bf16", "--no-sedd-scale-by-sigma", "--split", "98,1,1",
        "--data-path", "0.3", "a", "0.7", "b", "--lr", "1e-3", "--num-layers", "2",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "text,message",
    [("[1, 2]\n", "mapping"), ("a: [1, 2\n", "not valid YAML"), ("a: {b: 1}\n", "scalar")],
)
def test_bad_yaml_is_one_clear_error(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        expand_config_argv(["--config", str(config)])


def test_config_without_a_file_name():
    with pytest.raises(ConfigError, match="needs a YAML file"):
        expand_config_argv(["--config"])


def _args(**overrides):
    base = dict(
        sedd_graph="absorb", sedd_noise=None, sedd_scale_by_sigma=None, ema_decay=0.9999,
        sedd_sampling_eps=1e-3, sedd_sigma_min=1e-4, sedd_sigma_max=20.0, sedd_cond_dim=128,
        position_embedding_type="rope", swiglu=False, squared_relu=False,
        normalization="LayerNorm", group_query_attention=False, num_experts=None,
        lr_decay_iters=None, train_iters=100, lr_warmup_iters=10, context_parallel_size=1,
        fp8=None, transformer_impl="local", seq_length=64,
    )  # fmt: skip
    return SimpleNamespace(**{**base, **overrides})


def test_graph_dependent_defaults():
    absorb, uniform = _args(), _args(sedd_graph="uniform")
    validate_sedd_args(absorb)
    validate_sedd_args(uniform)
    assert (absorb.sedd_noise, absorb.sedd_scale_by_sigma) == ("loglinear", True)
    assert (uniform.sedd_noise, uniform.sedd_scale_by_sigma) == ("geometric", False)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(sedd_graph="uniform", sedd_scale_by_sigma=True), "scale-by-sigma"),
        (dict(ema_decay=1.0), "--ema-decay"),
        (dict(sedd_sampling_eps=0.0), "--sedd-sampling-eps"),
        (dict(sedd_sigma_min=30.0), "sigma-min"),
        (dict(position_embedding_type="learned_absolute"), "rotary"),
        (dict(normalization="RMSNorm"), "LayerNorm"),
        (dict(group_query_attention=True), "multi-head"),
        (dict(lr_warmup_iters=100), "--lr-warmup-iters"),
        (dict(context_parallel_size=3), "divisible by 2 x"),
        (dict(fp8="hybrid"), "Transformer Engine"),
    ],
)
def test_contradicting_flags(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_sedd_args(_args(**overrides))


def test_fused_kernels_switch_reaches_the_model_config(tmp_path):
    from sedd_megatron.training.arguments import add_sedd_args

    config = tmp_path / "c.yaml"
    config.write_text("sedd-fused-kernels: false\n")
    argv = expand_config_argv(["--config", str(config)])
    assert argv == ["--no-sedd-fused-kernels"]
    parser = add_sedd_args(argparse.ArgumentParser())
    assert parser.parse_args([]).sedd_fused_kernels is True
    assert parser.parse_args(argv).sedd_fused_kernels is False
