import json

import pytest

from sedd_megatron.errors import ConfigError
from sedd_megatron.plain import SEDDConfig

# The layout of louaaron/sedd-small's config.json (docs/architecture.md §5), abridged sub-sections.
PUBLISHED_SMALL = {
    "ngpus": 8,
    "tokens": 50257,
    "training": {"batch_size": 512, "accum": 1, "n_iters": 1300001, "ema": 0.9999},
    "data": {"train": "openwebtext", "valid": "wikitext103", "cache_dir": "data"},
    "graph": {"type": "absorb", "file": "data", "report_all": False},
    "noise": {"type": "loglinear", "sigma_min": 0.0001, "sigma_max": 20},
    "sampling": {"predictor": "euler", "steps": 128, "noise_removal": True},
    "optim": {"weight_decay": 0, "optimizer": "AdamW", "lr": 0.0003, "warmup": 2500},
    "model": {
        "name": "small",
        "type": "ddit",
        "hidden_size": 768,
        "cond_dim": 128,
        "length": 1024,
        "n_blocks": 12,
        "n_heads": 12,
        "scale_by_sigma": True,
        "dropout": 0.1,
        "score_strategy": 0,
    },
    "work_dir": "absorb_small",
}


def tiny(**overrides) -> SEDDConfig:
    fields = dict(tokens=1000, graph="absorb", hidden_size=64, cond_dim=32, length=32)
    fields.update(n_blocks=2, n_heads=4, scale_by_sigma=True)
    fields.update(overrides)
    return SEDDConfig(**fields)


def test_published_layout_round_trip():
    config = SEDDConfig.from_dict(PUBLISHED_SMALL)
    assert (config.hidden_size, config.n_blocks, config.n_heads, config.cond_dim) == (
        768,
        12,
        12,
        128,
    )
    assert config.graph == "absorb" and config.scale_by_sigma and config.dropout == 0.1
    assert config.vocab_rows == 50258 and config.head_dim == 64
    assert config.extra["model"] == {"score_strategy": 0}
    assert config.to_dict() == PUBLISHED_SMALL


def test_json_round_trip(tmp_path):
    config = SEDDConfig.from_dict(PUBLISHED_SMALL)
    config.to_json(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text()) == PUBLISHED_SMALL
    assert SEDDConfig.from_json(tmp_path / "config.json") == config


@pytest.mark.parametrize(
    "name,graph,rows", [("tiny_absorb", "absorb", 1001), ("tiny_uniform", "uniform", 1000)]
)
def test_conformance_configs(conformance_dir, name, graph, rows):
    path = conformance_dir / name / "config.json"
    config = SEDDConfig.from_json(path)
    assert config.graph == graph and config.vocab_rows == rows
    assert config.to_dict() == json.loads(path.read_text())


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(hidden_size=66), "divisible"),
        (dict(hidden_size=12, n_heads=4), "even"),
        (dict(graph="masked"), "graph.type"),
        (dict(graph="uniform", scale_by_sigma=True), "scale_by_sigma"),
        (dict(tokens=0), "tokens"),
        (dict(n_blocks=-1), "model.n_blocks"),
        (dict(cond_dim=True), "model.cond_dim"),
        (dict(length=3.5), "model.length"),
        (dict(dropout=1.0), "model.dropout"),
        (dict(noise_type="cosine"), "noise.type"),
        (dict(sigma_min=0.0), "noise.sigma_min"),
        (dict(sigma_max=1e-5), "noise.sigma_max"),
        (dict(model_type="dit"), "model.type"),
    ],
)
def test_invalid_fields_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        tiny(**overrides)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_missing_field_is_named():
    broken = json.loads(json.dumps(PUBLISHED_SMALL))
    del broken["model"]["n_heads"]
    with pytest.raises(ConfigError, match="model.n_heads"):
        SEDDConfig.from_dict(broken)
    with pytest.raises(ConfigError, match="graph.type"):
        SEDDConfig.from_dict({k: v for k, v in PUBLISHED_SMALL.items() if k != "graph"})


def test_bad_json_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SEDDConfig.from_json(tmp_path / "config.json")


BACKBONE = dict(
    ffn_hidden_size=96, n_kv_heads=2, kv_channels=24, rotary_base=500000.0, norm="rmsnorm",
    norm_eps=1e-6, mlp="swiglu", qk_norm=True,
)  # fmt: skip


def test_backbone_options_round_trip_and_stay_out_of_reference_configs():
    """Backbone keys appear in config.json only when they differ from the reference DiT."""
    assert "ffn_hidden_size" not in tiny().to_dict()["model"]
    assert SEDDConfig.from_dict(PUBLISHED_SMALL).to_dict() == PUBLISHED_SMALL
    config = tiny(**BACKBONE)
    model = config.to_dict()["model"]
    assert model["head_dim"] == 24 and model["n_kv_heads"] == 2 and model["mlp"] == "swiglu"
    assert SEDDConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert (config.head_dim, config.kv_heads, config.ffn_width) == (24, 2, 96)
    assert not config.reference_backbone and tiny().reference_backbone


@pytest.mark.parametrize(
    "override,message",
    [
        (dict(n_kv_heads=3), "n_kv_heads"),
        (dict(kv_channels=15), "even"),
        (dict(ffn_hidden_size=0), "ffn_hidden_size"),
        (dict(norm="batchnorm"), "model.norm"),
        (dict(mlp="relu"), "model.mlp"),
        (dict(qk_norm="yes"), "qk_norm"),
        (dict(rotary_base=0), "rotary_base"),
        (dict(norm_eps=-1.0), "norm_eps"),
        (dict(hidden_size=66, n_heads=4), "divisible"),
    ],
)
def test_bad_backbone_options_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**override)


def test_head_dim_frees_the_hidden_size_from_the_heads():
    assert tiny(hidden_size=66, n_heads=4, kv_channels=16).head_dim == 16
