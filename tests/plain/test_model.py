import math

import pytest
import torch
from safetensors.torch import load_file

from sedd_megatron.plain import SEDD, SEDDConfig
from sedd_megatron.plain.model import TimestepEmbedder, apply_rotary

MODELS = ("tiny_absorb", "tiny_uniform")
EXPECTED = ("expected_euler", "expected_analytic")


@pytest.fixture(scope="module", params=MODELS)
def conformance_model(request, conformance_dir):
    return request.param, SEDD.from_pretrained(conformance_dir / request.param)


@pytest.mark.parametrize("expected_name", EXPECTED)
def test_matches_reference_log_score(conformance_model, conformance_dir, expected_name):
    name, model = conformance_model
    expected = load_file(conformance_dir / name / f"{expected_name}.safetensors")
    with torch.no_grad():
        log_score = model(expected["perturbed"], expected["sigma"])
    reference = expected["log_score"]
    assert log_score.dtype == torch.float32 and log_score.shape == reference.shape
    scale = reference.abs().max().item()
    max_error = (log_score - reference).abs().max().item()
    assert max_error <= 1e-5 * scale, f"max abs error {max_error:.3g} (max |ref| {scale:.3g})"
    torch.testing.assert_close(log_score, reference, rtol=1e-5, atol=1e-5 * scale)


def test_bin_and_safetensors_weights_identical(conformance_dir):
    for name in MODELS:
        from_safetensors = SEDD.from_pretrained(conformance_dir / name).state_dict()
        from_bin = SEDD.from_pretrained(
            conformance_dir / name, weights_name="pytorch_model.bin"
        ).state_dict()
        assert list(from_bin) == list(from_safetensors)
        for key, tensor in from_safetensors.items():
            assert torch.equal(tensor, from_bin[key]), key


def test_current_token_is_zero_and_eval_deterministic(conformance_model):
    _, model = conformance_model
    generator = torch.Generator().manual_seed(0)
    indices = torch.randint(0, model.config.vocab_rows, (2, 16), generator=generator)
    sigma = torch.tensor([0.1, 2.0])
    with torch.no_grad():
        first, second = model(indices, sigma), model(indices, sigma)
    assert torch.equal(first, second)
    assert torch.all(first.gather(-1, indices[..., None]) == 0)
    assert torch.isfinite(first).all()


def test_train_mode_uses_dropout(conformance_model):
    _, model = conformance_model
    indices = torch.randint(
        0, model.config.tokens, (2, 16), generator=torch.Generator().manual_seed(1)
    )
    sigma = torch.tensor([0.3, 1.0])
    try:
        with torch.no_grad():
            eval_out = model(indices, sigma)
            train_out = model.train()(indices, sigma)
    finally:
        model.eval()
    assert not torch.allclose(train_out, eval_out)
    assert torch.all(train_out.gather(-1, indices[..., None]) == 0)


def test_timestep_features_cos_first():
    features = TimestepEmbedder.sinusoidal_features(torch.tensor([0.5]), 256)[0]
    torch.testing.assert_close(
        features[0:3], torch.tensor([0.87758, 0.89369, 0.90772]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        features[128:131], torch.tensor([0.47943, 0.44868, 0.41958]), atol=1e-5, rtol=0
    )


def test_rotary_rotates_halves():
    x = torch.zeros(1, 1, 1, 4)
    x[..., 0] = 1.0
    angle = 0.3
    cos = torch.full((1, 1, 1, 4), math.cos(angle))
    sin = torch.full((1, 1, 1, 4), math.sin(angle))
    # (x0, x2) is the rotated pair in the non-interleaved convention
    expected = torch.tensor([math.cos(angle), 0.0, math.sin(angle), 0.0])
    torch.testing.assert_close(apply_rotary(x, cos, sin)[0, 0, 0], expected)


def test_fresh_model_is_reference_init():
    torch.manual_seed(0)
    config = SEDDConfig(
        tokens=50, graph="absorb", hidden_size=32, cond_dim=8, length=16, n_blocks=2, n_heads=4
    )
    model = SEDD(config).eval()
    bound = 1 / math.sqrt(config.hidden_size)
    assert model.vocab_embed.embedding.abs().max() <= bound
    assert model.vocab_embed.embedding.std() > 0.5 * bound / math.sqrt(3)
    for block in model.blocks:
        assert not block.adaLN_modulation.weight.any() and not block.adaLN_modulation.bias.any()
    final = model.output_layer
    assert not final.linear.weight.any() and not final.adaLN_modulation.weight.any()
    # zero output layer: the log score is -log(e^sigma - 1) - log(V' - 1) except 0 at the token
    indices = torch.randint(0, 51, (2, 8))
    sigma = torch.tensor([0.2, 3.0])
    with torch.no_grad():
        out = model(indices, sigma)
    constant = -torch.log(torch.expm1(sigma)) - math.log(50)
    expected = constant[:, None, None].expand(2, 8, 51).scatter(-1, indices[..., None], 0.0)
    torch.testing.assert_close(out, expected)


def test_forward_rejects_bad_shapes(conformance_model):
    _, model = conformance_model
    with pytest.raises(ValueError, match="sigma"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(3))
