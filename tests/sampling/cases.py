"""Sampling cases shared by the in-process tests and the torchrun worker."""

import torch

from sedd_megatron.sampling import Condition, Sampler, SamplingOptions
from tests.diffusion.conformance_utils import (
    draw_input,
    graph_and_noise,
    load_expected,
    teacher_forcing,
)

SAMPLE_CASES = ("analytic", "euler", "none")
SEED, SAMPLE_IDS = 7, [0, 1, 2]
STEPS = 6


def prompt_conditions(length: int = 32) -> list[Condition]:
    """Row 1 clamped to a 3-token prefix and a 2-token suffix; rows 0 and 2 free."""
    clamp = Condition(
        torch.tensor([0, 1, 2, length - 2, length - 1]), torch.tensor([5, 6, 7, 8, 9])
    )
    return [Condition.none(), clamp, Condition.none()]


def sample_case(model, predictor: str, ids=SAMPLE_IDS) -> torch.Tensor:
    """Float64 samples of ``ids`` (rows of prompt_conditions) with the fixed seed."""
    conditions = prompt_conditions(model.seq_length)
    sampler = Sampler(model, SamplingOptions(predictor=predictor, steps=STEPS))
    return sampler.sample([conditions[i] for i in ids], ids, SEED).cpu()


def conformance_report(model, conformance_dir, name: str) -> dict:
    """Teacher-forced weights (largest excess over the tolerance of the diffusion tests and
    largest relative difference from the float64 evaluation of the reference formulas) and the
    float32 replay of the recorded draws, per predictor."""
    out = {}
    for predictor in ("euler", "analytic"):
        data = load_expected(conformance_dir, name, predictor)
        graph, _ = graph_and_noise(data)
        sampler = Sampler(model, SamplingOptions(predictor=predictor, steps=8))
        score_fn = lambda x, sigma, dim=graph.dim: model.log_score(x, sigma)[..., :dim]
        excess, relative = float("-inf"), 0.0
        for (i, ours, ours64, ref), step in zip(
            teacher_forcing(score_fn, data, predictor), sampler.steps, strict=True
        ):
            w = sampler.weights(draw_input(data, graph, i), step)
            rounding = (ours.double() - ours64).abs().amax(-1, keepdim=True)
            tol = 1e-6 + 1e-4 * ours64.abs() + 16 * rounding
            excess = max(excess, ((ref.double() - w).abs() - tol).max().item())
            scale = ours64.abs().amax(-1, keepdim=True)
            relative = max(relative, ((w - ours64).abs() / scale).max().item())
        out[f"{name}/{predictor}/weights_excess"] = excess
        out[f"{name}/{predictor}/weights_relative"] = relative
        out[f"{name}/{predictor}/replay"] = replay(model, data, predictor)
    return out


def replay(model, data: dict, predictor: str) -> bool:
    """The float32 sampler from the recorded RNG state redraws every recorded draw."""
    conditions = None
    if "cond_locs" in data:
        locs = data["cond_locs"]
        conditions = [Condition(locs, data["tokens"][0, locs])] * data["sample"].shape[0]
    sampler = Sampler(model, SamplingOptions(predictor=predictor, steps=8, fp32_sampling=True))
    outs = []
    saved = torch.get_rng_state()
    try:
        torch.set_rng_state(data["sample_init_rng_state"])
        x = sampler.sample(
            conditions, [0, 1], None, callback=lambda step, x_in, w, x_out: outs.append(x_out)
        )
    finally:
        torch.set_rng_state(saved)
    same = [torch.equal(o, data[f"sample_calls.{i}.out"]) for i, o in enumerate(outs)]
    return len(same) == 9 and all(same) and torch.equal(x, data["sample"])
