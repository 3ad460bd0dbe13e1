"""SEDDTransformerConfig validation (no process group needed)."""

import pytest

megatron = pytest.importorskip("megatron.core")

import torch  # noqa: E402

from sedd_megatron.models.sedd import SEDDTransformerConfig  # noqa: E402

BASE = dict(num_layers=2, hidden_size=64, num_attention_heads=4, cond_dim=32, num_tokens=1000)


def test_defaults_follow_the_reference():
    config = SEDDTransformerConfig(**BASE)
    assert config.vocab_rows == 1001 and config.mask_id == 1000
    assert not config.add_bias_linear and config.attention_dropout == 0.0
    assert config.hidden_dropout == 0.1 and config.layernorm_epsilon == 1e-5
    assert config.has_cond_embedder
    uniform = SEDDTransformerConfig(**BASE, graph="uniform", scale_by_sigma=False)
    assert uniform.vocab_rows == 1000 and uniform.mask_id is None


@pytest.mark.parametrize(
    "override,message",
    [
        (dict(graph="gaussian"), "graph"),
        (dict(graph="uniform"), "scale_by_sigma"),
        (dict(num_tokens=1), "num_tokens"),
        (dict(cond_dim=0), "cond_dim"),
        (dict(num_query_groups=3), "num_query_groups"),
        (dict(hidden_size=60, num_attention_heads=4, kv_channels=15), "kv_channels"),
        (dict(gated_linear_unit=True), "gated_linear_unit"),
        (dict(normalization="L2Norm"), "normalization"),
        (dict(activation_func=torch.nn.functional.relu), "tanh-GELU or SwiGLU"),
    ],
)
def test_invalid_configs_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        SEDDTransformerConfig(**{**BASE, **override})


def test_backbone_options_are_accepted():
    """RMSNorm, SwiGLU (gated with silu), grouped-query attention, QK norm, any width."""
    config = SEDDTransformerConfig(
        **BASE,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        num_query_groups=2,
        qk_layernorm=True,
        ffn_hidden_size=96,
        kv_channels=24,
        rotary_base=500000.0,
    )
    assert config.rms_norm and config.num_query_groups == 2 and config.kv_channels == 24
