"""Samplers: the reference's recorded runs (time grid, weights' structure, clamping, teacher forcing
with the plain model when available) and brute force with the exact score on a tiny vocabulary."""

import pytest
import torch
from scipy import stats

from sedd_megatron.diffusion import (
    clamp_projector,
    get_graph,
    get_noise,
    mask_projector,
    sample,
    time_grid,
)

from .conformance_utils import (
    CASES,
    SAMPLER_EPS,
    assert_teacher_forcing,
    draw_input,
    graph_and_noise,
    load_expected,
    num_draws,
    projector,
)
from .exact import SequenceModel

case_ids = pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c))


@case_ids
def test_time_grid(conformance_dir, case):
    data = load_expected(conformance_dir, *case)
    steps = len(data["sample_timesteps"]) - 1
    assert torch.equal(time_grid(steps, SAMPLER_EPS), data["sample_timesteps"])
    assert num_draws(data) == steps + 1


@case_ids
def test_limit_draw_replays_reference_rng(conformance_dir, case):
    """The limiting draw uses exactly the reference's random numbers (none for absorb)."""
    data = load_expected(conformance_dir, *case)
    graph, _ = graph_and_noise(data)
    saved = torch.get_rng_state()
    try:
        torch.set_rng_state(data["sample_init_rng_state"])
        graph.sample_limit(*data["sample"].shape)
        assert torch.equal(torch.get_rng_state(), data["sample_calls.0.rng_state"])
    finally:
        torch.set_rng_state(saved)


@case_ids
def test_clamped_positions_hold(conformance_dir, case):
    data = load_expected(conformance_dir, *case)
    if "cond_locs" not in data:
        pytest.skip("unconditional run")
    locs, ids = data["cond_locs"], data["tokens"][0, data["cond_locs"]]
    assert (data["sample"][:, locs] == ids).all()
    graph, noise = graph_and_noise(data)
    seen = []

    def score_fn(x, sigma):
        seen.append(x)
        return torch.randn(*x.shape, graph.dim)

    x = sample(score_fn, graph, noise, (2, 32), 8, projector=clamp_projector(locs, ids))
    assert all((x_in[:, locs] == ids).all() for x_in in seen) and (x[:, locs] == ids).all()


def test_mask_projector_per_row():
    graph, noise = get_graph("absorb", 20), get_noise("loglinear")
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, :2], mask[2, 5:] = True, True
    values = torch.randint(0, 20, (3, 10))
    x = sample(
        lambda x, s: torch.randn(*x.shape, graph.dim), graph, noise, (3, 10), 4,
        projector=mask_projector(mask, values),
    )  # fmt: skip
    assert torch.equal(x[mask], values[mask])


def recovered_log_score(data, graph, noise, predictor, i, x):
    """Invert the recorded weights of draw i for the score that produced them (input x): the weights
    are affine in the score, with s_x = 1 known. Feeding it back must reproduce every column,
    including those the inversion did not use (MASK entry, current token, unmasked rows)."""
    probs = data[f"sample_calls.{i}.probs"].double()
    steps = len(data["sample_timesteps"]) - 1
    t = data["sample_timesteps"][i] * torch.ones(x.shape[0], 1)
    dt = (1 - SAMPLER_EPS) / steps
    sigma, rate = noise(t)
    if i == steps:
        kind, dsigma = "analytic", sigma
    else:
        kind, dsigma = predictor, sigma - noise(t - dt)[0]
    dsigma, rate = dsigma.double()[..., None], rate.double()[..., None]
    n = graph.dim
    if graph.absorb:
        coef = torch.expm1(dsigma) if kind == "analytic" else dt * rate
        s = torch.ones(*x.shape, n, dtype=torch.float64)
        masked = x == n - 1
        s[..., : n - 1] = torch.where(masked[..., None], probs[..., : n - 1] / coef, 1.0)
    elif kind == "euler":
        s = probs * n / (dt * rate)
    else:  # probs_y = (e^d s_y + c S) (a + e^-d [y = x]), c = -expm1(d)/N, a = -expm1(-d)/N
        a, c = -torch.expm1(-dsigma) / n, -torch.expm1(dsigma) / n
        others = probs.scatter(-1, x[..., None], 0.0).sum(-1, keepdim=True) / a
        total = (others + dsigma.exp()) / (dsigma.exp() + (n - 1) * c)
        s = (probs / a - c * total) / dsigma.exp()
    return s.scatter(-1, x[..., None], 1.0).log().float()  # float32, as a model


@case_ids
def test_recorded_weights_structure(conformance_dir, case):
    """What our predictors imply for the recorded weights, without the model: rows sum to 1
    (denoiser of absorb excepted: MASK column dropped), unmasked tokens stay put, and the weights
    are our formula applied to the score recovered from them."""
    data = load_expected(conformance_dir, *case)
    graph, noise = graph_and_noise(data)
    predictor = case[1]
    steps = len(data["sample_timesteps"]) - 1
    for i in range(num_draws(data)):
        probs, x = data[f"sample_calls.{i}.probs"], draw_input(data, graph, i)
        assert probs.shape[-1] == graph.dim - (graph.absorb and i == steps)
        if not (graph.absorb and i == steps):
            # float32 rows: tight where entries are O(1), looser where the formula cancels
            # (uniform analytic step at sigma = 20 has entries of order 1e3 that sum to 1)
            scale = probs.double().abs().amax(-1)
            tol = torch.where(scale <= 1, 2e-5, 1e-3 * scale)
            assert ((probs.double().sum(-1) - 1).abs() <= tol).all(), f"draw {i}"
        if graph.absorb:
            kept = x != graph.dim - 1
            onehot = torch.nn.functional.one_hot(x, graph.dim)[..., : probs.shape[-1]].float()
            torch.testing.assert_close(probs[kept], onehot[kept])
        log_score = recovered_log_score(data, graph, noise, predictor, i, x)
        # the recovery is exact up to the recorded row's own float32 inconsistency
        slack = 2 * (probs.double().sum(-1, keepdim=True) - 1).abs()
        if graph.absorb and i == steps:
            slack = 0.0
        score_fn = lambda xx, ss, log_score=log_score: log_score
        assert_teacher_forcing(score_fn, data, predictor, draws=[i], slack=slack)


def plain_score_fn(conformance_dir, model_name):
    plain = pytest.importorskip("sedd_megatron.plain")
    if not hasattr(plain, "SEDD") or not hasattr(plain.SEDD, "from_pretrained"):
        pytest.skip("sedd_megatron.plain.SEDD.from_pretrained not available")
    model = plain.SEDD.from_pretrained(conformance_dir / model_name).eval()

    def score_fn(x, sigma):
        with torch.no_grad():
            return model(x, sigma)

    return score_fn


@case_ids
def test_teacher_forcing_with_plain_model(conformance_dir, case):
    data = load_expected(conformance_dir, *case)
    assert_teacher_forcing(plain_score_fn(conformance_dir, case[0]), data, case[1])


@case_ids
def test_full_replay_with_plain_model(conformance_dir, case):
    """From the recorded initial RNG state, our float32 sampler redraws the reference's run."""
    data = load_expected(conformance_dir, *case)
    score_fn = plain_score_fn(conformance_dir, case[0])
    graph, noise = graph_and_noise(data)
    outs = []
    saved = torch.get_rng_state()
    try:
        torch.set_rng_state(data["sample_init_rng_state"])
        x = sample(
            score_fn, graph, noise, tuple(data["sample"].shape), len(data["sample_timesteps"]) - 1,
            predictor=case[1], projector=projector(data), dtype=torch.float32,
            callback=lambda i, x_in, probs, x_out: outs.append(x_out),
        )  # fmt: skip
    finally:
        torch.set_rng_state(saved)
    for i, out in enumerate(outs):
        assert torch.equal(out, data[f"sample_calls.{i}.out"]), f"draw {i}"
    assert torch.equal(x, data["sample"])


# Brute force: with the exact score of a known distribution the samplers reproduce it.
EXACT = [("absorb", "loglinear", 3), ("uniform", "geometric", 4)]


@pytest.mark.parametrize("predictor", ["euler", "analytic"])
@pytest.mark.parametrize("setup", EXACT, ids=lambda s: s[0])
def test_exact_score_sampling(setup, predictor):
    name, noise_name, tokens = setup
    graph, noise = get_graph(name, tokens), get_noise(noise_name)
    model = SequenceModel(graph, length=2, seed=0)
    n = 20_000
    x = sample(
        model.score_fn, graph, noise, (n, 2), 128, predictor=predictor,
        time_dtype=torch.float64, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    counts = torch.bincount(model.index(x), minlength=model.num_states)
    support = model.clean
    assert counts.sum() == counts[support].sum()  # no MASK left, only clean sequences
    test = stats.chisquare(counts[support].numpy(), n * model.p0[support].numpy())
    assert test.pvalue > 1e-3, test


def test_sample_per_row_generators():
    graph, noise = get_graph("uniform", 4), get_noise("geometric")
    model = SequenceModel(graph, length=2, seed=1)

    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return sample(model.score_fn, graph, noise, (len(seeds), 2), 16, generator=gens)

    assert torch.equal(run([7, 8, 9, 10])[[2, 0]], run([9, 7]))
