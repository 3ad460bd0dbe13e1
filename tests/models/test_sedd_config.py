"""SEDDTransformerConfig validation (no process group needed)."""

import pytest

megatron = pytest.importorskip("megatron.core")

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
        (dict(num_query_groups=2), "num_query_groups"),
        (dict(hidden_size=60, num_attention_heads=4, kv_channels=15), "kv_channels"),
        (dict(gated_linear_unit=True), "gated_linear_unit"),
    ],
)
def test_invalid_configs_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        SEDDTransformerConfig(**{**BASE, **override})
