"""--config YAML expansion and SEDD flag validation (in process, no Megatron start-up)."""

import argparse
import re
from types import SimpleNamespace

import pytest

from sedd_megatron.errors import ConfigError
from sedd_megatron.training.arguments import (
    expand_config_argv,
    training_setting_problems,
    validate_sedd_args,
)


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


@pytest.mark.parametrize(
    "text,message",
    [
        ("lr: 0.001\nnum-layers: 2\nlr: 0.002\n", "line 3: 'lr' is given twice (first on line 1)"),
        ("num_layers: 2\n--num-layers: 4\n", "line 2: '--num-layers' is given twice"),
    ],
)
def test_a_flag_given_twice_in_a_config_is_refused(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{config}: {message}")):
        expand_config_argv(["--config", str(config)])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="absent.yaml: no such file"):
        expand_config_argv(["--config", str(tmp_path / "absent.yaml")])


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
        (dict(normalization="L2Norm"), "LayerNorm / RMSNorm"),
        (
            dict(group_query_attention=True, num_query_groups=3, num_attention_heads=4),
            "must divide",
        ),
        (dict(rotary_percent=0.5), "rotary-percent"),
        (dict(num_experts=8), "--num-experts"),
        (dict(squared_relu=True), "--squared-relu"),
        (dict(add_qkv_bias=True), "--add-qkv-bias"),
        (dict(kv_channels=15), "must be even"),
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


# Megatron's flags as parse_args leaves them (before validate_args fills its derived values).
MEGATRON = dict(
    num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=None, kv_channels=None,
    seq_length=64, max_position_embeddings=64, micro_batch_size=2, global_batch_size=None,
    train_iters=100, train_samples=None, lr_decay_iters=None, save_interval=None,
    eval_interval=1000, log_interval=100, vocab_size=1000, lr=3e-4, min_lr=0.0,
    lr_warmup_iters=10, lr_warmup_samples=0, lr_warmup_init=0.0, lr_warmup_fraction=None,
    weight_decay=0.0, clip_grad=1.0, eval_iters=100, hidden_dropout=0.1, attention_dropout=0.0,
    tensor_model_parallel_size=1, save=None,
)  # fmt: skip


def test_good_training_settings_pass():
    assert training_setting_problems(SimpleNamespace(**MEGATRON)) == []
    assert training_setting_problems(SimpleNamespace()) == []  # nothing set: nothing to check
    validate_sedd_args(_args(**MEGATRON))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(lr=-1.0), "--lr must not be negative, got -1.0"),
        (dict(lr=float("nan")), "--lr must not be negative, got nan"),
        (dict(min_lr=1e-3), "--min-lr (0.001) must not exceed --lr (0.0003)"),
        (dict(lr_warmup_iters=-1), "--lr-warmup-iters must not be negative, got -1"),
        (dict(lr_warmup_fraction=1.5), "--lr-warmup-fraction must be in [0, 1], got 1.5"),
        (dict(hidden_dropout=1.0), "--hidden-dropout must be in [0, 1), got 1.0"),
        (dict(seq_length=0), "--seq-length must be positive, got 0"),
        (dict(micro_batch_size=0), "--micro-batch-size must be positive, got 0"),
        (dict(global_batch_size=-2), "--global-batch-size must be positive, got -2"),
        (dict(num_attention_heads=6), "--hidden-size (64) must be divisible by "
                                      "--num-attention-heads (6)"),  # fmt: skip
        (dict(tensor_model_parallel_size=8), "--num-attention-heads (4) must be divisible by "
                                             "--tensor-model-parallel-size (8)"),  # fmt: skip
        (dict(ffn_hidden_size=130, tensor_model_parallel_size=4), "--ffn-hidden-size (130)"),
        (dict(save="ckpt"), "--save needs --save-interval"),
        (
            dict(distribute_saved_activations=True, recompute_granularity="full"),
            "--distribute-saved-activations needs --tensor-model-parallel-size >= 2",
        ),
        (
            dict(
                distribute_saved_activations=True,
                recompute_granularity="selective",
                tensor_model_parallel_size=2,
                sequence_parallel=True,
            ),
            "--distribute-saved-activations needs --recompute-granularity full and no "
            "--sequence-parallel",
        ),
    ],
)
def test_bad_training_settings(overrides, message):
    problems = training_setting_problems(SimpleNamespace(**{**MEGATRON, **overrides}))
    assert len(problems) == 1 and problems[0].startswith(message), problems
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_sedd_args(_args(**{**MEGATRON, **overrides}))


def test_divisibility_is_not_checked_on_sizes_already_refused():
    problems = training_setting_problems(SimpleNamespace(**{**MEGATRON, "num_attention_heads": 0}))
    assert problems == ["--num-attention-heads must be positive, got 0"]


def test_local_spec_is_the_default_even_where_transformer_engine_is_installed(monkeypatch):
    """The TE spec has never been checked against the local one on a GPU: it stays opt-in, and
    a run that could use it says so in one line."""
    from sedd_megatron.training import arguments

    monkeypatch.setattr(arguments, "transformer_engine_installed", lambda: True)
    defaults = arguments.accelerator_defaults()
    assert defaults["transformer_impl"] == "local"
    assert defaults["apply_rope_fusion"] is False
    notice = arguments.transformer_engine_notice(SimpleNamespace(transformer_impl="local"))
    assert "--transformer-impl transformer_engine" in notice and "not yet verified" in notice
    chosen = SimpleNamespace(transformer_impl="transformer_engine")
    assert arguments.transformer_engine_notice(chosen) is None
    monkeypatch.setattr(arguments, "transformer_engine_installed", lambda: False)
    assert arguments.transformer_engine_notice(SimpleNamespace(transformer_impl="local")) is None


def test_layer_spec_defaults_to_local_modules():
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    from sedd_megatron.models.sedd import get_sedd_layer_spec

    attention = get_sedd_layer_spec().submodules.self_attention.submodules
    assert attention.linear_qkv is ColumnParallelLinear
    assert attention.linear_proj is RowParallelLinear


def test_no_eval_interval_means_one_evaluation_after_training():
    """Megatron's eval_interval=None ("no evaluation during training") made its validation
    sizing fail (``train_iters // None``): it becomes train_iters + 1; a given one stays."""
    args = _args(train_iters=2, lr_warmup_iters=1, eval_interval=None, eval_iters=1)
    validate_sedd_args(args)
    assert args.eval_interval == 3
    assert args.train_iters // args.eval_interval + 1 == 1  # Megatron's evaluation count
    assert not any(it % args.eval_interval == 0 for it in range(1, args.train_iters + 1))
    given = _args(train_iters=2, lr_warmup_iters=1, eval_interval=5, eval_iters=1)
    validate_sedd_args(given)
    assert given.eval_interval == 5


def test_command_line_checks_need_no_megatron(tmp_path):
    """check_argv reads the settings the command line (and --config) gives, without Megatron's
    parser: the same problems as after parsing, and nothing for settings left out."""
    import subprocess
    import sys

    from sedd_megatron.training.arguments import check_argv

    config = tmp_path / "c.yaml"
    config.write_text("num-attention-heads: 5\n")
    with pytest.raises(ConfigError, match=r"--hidden-size \(64\) must be divisible by --num-"):
        check_argv(["--hidden-size", "64", "--config", str(config), "--unknown", "3"])
    with pytest.raises(ConfigError, match=r"^--lr must not be negative, got -1\.0$"):
        check_argv(["--lr=-1", "--hidden-size", "64"])
    with pytest.raises(ConfigError, match="--save needs --save-interval"):
        check_argv(["--save", "ckpt"])
    settings = check_argv(["--lr", "x", "--lr-warmup", "-3", "--tensor-model-parallel-size"])
    assert settings == argparse.Namespace()  # a value missing: left to Megatron's parser
    assert check_argv(["--lr", "x", "--lr-warmup", "-3"]).lr is None  # no abbreviations
    code = "import sys, sedd_megatron.training.pretrain; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # pretrain_sedd.py checks argv before torch loads
