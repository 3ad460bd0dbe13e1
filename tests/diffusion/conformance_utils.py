"""Conformance data access and the sampler teacher-forcing check (usable with any score function).

``teacher_forcing(score_fn, ...)`` recomputes, for every recorded categorical draw of the reference
sampler, our transition weights from the recorded input of that draw; a model engineer can call
``assert_teacher_forcing(model_score_fn, conformance_dir, "tiny_absorb", "analytic")``.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from sedd_megatron.diffusion import (
    PREDICTORS,
    clamp_projector,
    denoiser_probs,
    get_graph,
    get_noise,
)

GRAPH_NOISE = {"tiny_absorb": ("absorb", "loglinear"), "tiny_uniform": ("uniform", "geometric")}
SAMPLER_EPS = 1e-5
CASES = [(m, p) for m in GRAPH_NOISE for p in ("euler", "analytic")]


def load_expected(conformance_dir: Path, model: str, predictor: str) -> dict:
    data = load_file(str(Path(conformance_dir) / model / f"expected_{predictor}.safetensors"))
    with open(Path(conformance_dir) / model / f"expected_{predictor}.json") as f:
        data["json"] = json.load(f)
    return data


def graph_and_noise(data: dict):
    config = data["json"]["config"]
    noise = config["noise"]
    return (
        get_graph(config["graph"]["type"], config["tokens"]),
        get_noise(noise["type"], noise["sigma_min"], noise["sigma_max"]),
    )


def projector(data: dict):
    """The clamp of the analytic files (row 0 of tokens at cond_locs), identity otherwise."""
    if "cond_locs" not in data:
        return lambda x: x
    locs = data["cond_locs"]
    return clamp_projector(locs, data["tokens"][0, locs])


def num_draws(data: dict) -> int:
    return data["json"]["sample_calls"]


def draw_input(data: dict, graph, i: int) -> torch.Tensor:
    """The tokens fed to draw i: the (projected) previous draw, or the limiting draw for i = 0."""
    if i > 0:
        return projector(data)(data[f"sample_calls.{i - 1}.out"])
    shape = tuple(data["sample"].shape)
    rng = torch.get_rng_state()
    torch.set_rng_state(data["sample_init_rng_state"])
    try:
        x = graph.sample_limit(*shape)
    finally:
        torch.set_rng_state(rng)
    return projector(data)(x)


def draw_probs(score_fn, data: dict, predictor: str, i: int) -> torch.Tensor:
    """Our transition weights for draw i, fed the recorded input of that draw."""
    graph, noise = graph_and_noise(data)
    timesteps = data["sample_timesteps"]
    steps = len(timesteps) - 1
    x = draw_input(data, graph, i)
    t = timesteps[i] * torch.ones(x.shape[0], 1)
    if i == steps:
        return denoiser_probs(graph, noise, score_fn, x, t)
    return PREDICTORS[predictor](graph, noise, score_fn, x, t, (1 - SAMPLER_EPS) / steps)


def teacher_forcing(score_fn, data: dict, predictor: str, draws=None):
    """Yield (i, our weights, our weights in float64, recorded weights) for the recorded draws.

    The float64 weights use the same (float32) score upcast: their difference from the float32
    weights measures the formula's rounding, which is large where it cancels (uniform analytic step
    at sigma = 20: e^{dsigma} s_y - (e^{dsigma} - 1) S / N with e^{dsigma} ~ 1e7)."""
    score64 = lambda x, sigma: score_fn(x, sigma).double()
    for i in range(num_draws(data)) if draws is None else draws:
        ours = draw_probs(score_fn, data, predictor, i)
        yield i, ours, draw_probs(score64, data, predictor, i), data[f"sample_calls.{i}.probs"]


def assert_teacher_forcing(
    score_fn, data: dict, predictor: str, draws=None, rtol=1e-4, atol=1e-6, slack=0.0
):
    """Recorded weights == ours to rtol/atol plus 16x our float32 rounding (row maximum) plus
    ``slack`` (broadcast against the weights)."""
    for i, ours, ours64, ref in teacher_forcing(score_fn, data, predictor, draws):
        rounding = (ours.double() - ours64).abs().amax(-1, keepdim=True)
        tol = atol + rtol * ours64.abs() + 16 * rounding + slack
        excess = (ref.double() - ours64).abs() - tol
        assert excess.max() <= 0, (
            f"draw {i}: max |ours - recorded| = {(ref.double() - ours64).abs().max():.3g}, "
            f"{int((excess > 0).sum())} elements out of tolerance"
        )
