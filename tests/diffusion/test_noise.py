"""Noise schedules against a table of their values (docs/math.md §2) and the conformance vectors."""

import math

import pytest
import torch

from sedd_megatron.diffusion import GeometricNoise, LogLinearNoise, get_noise

from .conformance_utils import CASES, graph_and_noise, load_expected

T = [1e-5, 1e-3, 0.1, 0.5, 0.9, 1.0]
# Values of the reference's schedule classes in float32, as printed (docs/math.md §2 tabulates
# the same schedules); tolerance: half a unit of the last printed digit
TABLE = {
    ("loglinear", 0): ["1.0e-5", "9.99e-4", "0.105249", "0.692148", "2.293625", "6.907768"],
    ("loglinear", 1): ["0.99901", "0.999999", "1.109877", "1.996004", "9.900893", "999.012878"],
    ("geometric", 0): ["1.0e-4", "1.01e-4", "3.39e-4", "0.044721", "5.901017", "20.0"],
    ("geometric", 1): ["0.001221", "0.001236", "0.004137", "0.545872", "72.028244", "244.121460"],
}


def half_ulp(text: str) -> float:
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10 ** (-decimals + (int(exponent) if exponent else 0))


@pytest.mark.parametrize("key", TABLE, ids=lambda k: f"{k[0]}-{'rate' if k[1] else 'total'}")
def test_spec_table(key):
    name, which = key
    # the table was computed in float32 (at t = 1 the loglinear rate is 999.0129 in float32, 999.0
    # exactly): evaluate in float32 and allow float32 rounding on top of the printed digits
    values = get_noise(name)(torch.tensor(T, dtype=torch.float32))[which]
    for value, text in zip(values.tolist(), TABLE[key], strict=True):
        assert abs(value - float(text)) <= half_ulp(text) + 2e-6 * abs(value), (value, text)


def test_rate_is_derivative():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    h = 1e-6
    for noise in (LogLinearNoise(), GeometricNoise()):
        numeric = (noise(t + h)[0] - noise(t - h)[0]) / (2 * h)
        torch.testing.assert_close(noise(t)[1], numeric, rtol=1e-7, atol=0)


def test_loglinear_masking_probability_is_linear():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    sigma = LogLinearNoise()(t)[0]
    torch.testing.assert_close(-torch.expm1(-sigma), (1 - 1e-3) * t)
    assert GeometricNoise(1e-5, 20.0)(torch.tensor(0.0))[0].item() == pytest.approx(1e-5)
    assert math.isclose(GeometricNoise()(torch.tensor(1.0))[0].item(), 20.0, rel_tol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c))
def test_conformance_sigma(conformance_dir, case):
    data = load_expected(conformance_dir, *case)
    _, noise = graph_and_noise(data)
    sigma, dsigma = noise(data["t"])
    torch.testing.assert_close(sigma, data["sigma"], rtol=1e-6, atol=0)
    torch.testing.assert_close(dsigma, data["dsigma"], rtol=1e-6, atol=0)


def test_get_noise_rejects_unknown():
    with pytest.raises(ValueError):
        get_noise("cosine")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_score_log_expm1_against_math(dtype):
    """log(e^sigma - 1) against math.log(math.expm1(sigma)) on both sides of the 0.5 switch."""
    from sedd_megatron.diffusion import score_log_expm1

    sigmas = [1e-4, 0.1, 0.4999, 0.5, 0.5001, 2.0, 10.0]
    got = score_log_expm1(torch.tensor(sigmas, dtype=dtype))
    want = torch.tensor([math.log(math.expm1(s)) for s in sigmas], dtype=torch.float64)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    # below 0.5 it is the log of expm1 itself, bit for bit (the branch the reference takes)
    small = torch.tensor([1e-4, 0.1, 0.4999], dtype=dtype)
    assert torch.equal(score_log_expm1(small), torch.expm1(small).log())
