"""time_conditioning "none" (time-independent absorbing SEDD) in the plain twin.

Independent truth: the absorbing graph's exact score at a masked position is
p_0(y | context) / (e^sigma - 1), so the network's log-score must move with sigma by exactly
-log(e^sigma - 1) and its exponential must sum to 1 / (e^sigma - 1) over the data tokens.
"""

import dataclasses
import math

import pytest
import torch

from sedd_megatron.errors import ConfigError
from sedd_megatron.plain import SEDD, SEDDConfig, expected_shapes


def tiny(**overrides) -> SEDDConfig:
    values = dict(
        tokens=50, graph="absorb", hidden_size=32, cond_dim=16, length=12, n_blocks=2, n_heads=4,
        dropout=0.0, time_conditioning="none",
    )  # fmt: skip
    values.update(overrides)
    return SEDDConfig(**values)


def random_model(config: SEDDConfig) -> SEDD:
    torch.manual_seed(0)
    model = SEDD(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)  # the zero-initialised layers too
    return model


def test_config_defaults_keep_published_layout():
    sigma = tiny(time_conditioning="sigma")
    assert "time_conditioning" not in sigma.to_dict()["model"]
    none = tiny()
    assert none.to_dict()["model"]["time_conditioning"] == "none"
    assert SEDDConfig.from_dict(none.to_dict()) == none
    assert SEDDConfig.from_dict(sigma.to_dict()) == sigma


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(graph="uniform", scale_by_sigma=False), "only defined for graph.type 'absorb'"),
        (dict(scale_by_sigma=False), "needs model.scale_by_sigma=True"),
        (dict(time_conditioning="t"), "model.time_conditioning must be one of"),
    ],
)
def test_invalid_configs(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**overrides)


def test_layout_has_cond_instead_of_sigma_map():
    shapes = expected_shapes(tiny())
    assert not any(key.startswith("sigma_map.") for key in shapes)
    assert shapes["cond_map.cond"] == (16,)
    assert list(random_model(tiny()).state_dict()) == list(shapes)


def test_log_score_sigma_dependence_is_exact():
    config = tiny()
    model = random_model(config)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, config.tokens, (3, config.length), generator=gen)
    masked = torch.rand(x.shape, generator=gen) < 0.5
    x[masked] = config.tokens  # MASK
    sigma_a = torch.tensor([0.2, 0.2, 0.2])  # below 0.5: the expm1 branch
    sigma_b = torch.tensor([3.0, 3.0, 3.0])
    with torch.no_grad():
        a, b = model(x, sigma_a), model(x, sigma_b)
    shift = math.log(math.expm1(0.2)) - math.log(math.expm1(3.0))
    current = torch.zeros_like(a, dtype=torch.bool).scatter_(-1, x[..., None], True)
    torch.testing.assert_close(b[~current], a[~current] + shift, rtol=0, atol=1e-5)
    assert (a[current] == 0).all() and (b[current] == 0).all()
    # exp(log-score) over the data tokens sums to 1 / (e^sigma - 1) at masked positions.
    for sigma, out in ((0.2, a), (3.0, b)):
        sums = out[masked][:, : config.tokens].double().exp().sum(-1)
        expected = torch.full_like(sums, 1 / math.expm1(sigma))
        torch.testing.assert_close(sums, expected, rtol=1e-5, atol=0)


def test_sigma_model_unchanged_by_the_option():
    """The default path computes what it computed before: sigma_map present, no cond."""
    model = SEDD(dataclasses.replace(tiny(), time_conditioning="sigma"))
    assert hasattr(model, "sigma_map") and not hasattr(model, "cond_map")


def test_save_and_load_round_trip(tmp_path):
    model = random_model(tiny())
    model.save_pretrained(tmp_path / "ti")
    loaded = SEDD.from_pretrained(tmp_path / "ti")
    assert loaded.config == model.config
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)
