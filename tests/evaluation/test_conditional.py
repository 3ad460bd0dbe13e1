"""The conditional ELBO (docs/math.md §6.6): against an exact computation on an enumerable
model (every continuation state, quadrature over the total noise), and equal to the
unconditional bound draw for draw when the context is empty."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from sedd_megatron.errors import EvalError
from sedd_megatron.evaluation import evaluate_elbo
from sedd_megatron.evaluation.conditional import evaluate_conditional, total_bound

from .test_elbo_complete import EnumerableScorer

CONFORMANCE = Path(__file__).resolve().parents[1] / "data" / "conformance"


def exact_conditional(scorer, x0: torch.Tensor, context: int, nodes: int = 48) -> float:
    """-(complete conditional bound) of x0 given its first ``context`` tokens, exactly:
    int_0^{sigma_bar(1)} sum_{x_t} p(x_t | x0) sum_{l >= context} SE_l d sigma + L_c prior_kl,
    with x_t ranging over every continuation state (context clean), Gauss-Legendre in
    log sigma on [1e-12, sigma_bar(eps)] and [sigma_bar(eps), sigma_bar(1)]."""
    m, graph = scorer.exact, scorer.graph
    cont_len = len(x0) - context
    conts = torch.tensor(list(itertools.product(range(graph.dim), repeat=cont_len)))
    x_t = torch.cat([x0[:context].expand(len(conts), -1), conts], 1)
    x0b = x0.expand(len(conts), -1)
    s_eps = float(scorer.noise(torch.tensor(1e-3, dtype=torch.float64))[0])
    s_one = float(scorer.noise(torch.tensor(1.0, dtype=torch.float64))[0])
    u, w = np.polynomial.legendre.leggauss(nodes)
    total = 0.0
    for lo, hi in ((np.log(1e-12), np.log(s_eps)), (np.log(s_eps), np.log(s_one))):
        for u_j, w_j in zip(u, w, strict=True):
            log_sigma = lo + (hi - lo) * (u_j + 1) / 2
            sigma = float(np.exp(log_sigma))
            p_step = torch.linalg.matrix_exp(sigma * m.q)  # [to, from]
            p = torch.ones(len(conts), dtype=torch.float64)
            for j in range(cont_len):
                p = p * p_step[conts[:, j], x0[context + j]]
            sig = torch.full((len(conts), 1), sigma, dtype=torch.float64)
            se = graph.score_entropy(m.log_score(x_t, sigma), sig, x_t, x0b)[:, context:].sum(-1)
            f = torch.where(p > 0, p * se, torch.zeros_like(p)).sum()
            total += float(f) * sigma * w_j * (hi - lo) / 2  # d sigma = sigma du
    return total + cont_len * float(graph.prior_kl(s_one))


@pytest.mark.parametrize(
    "graph_name, noise_name, design, wrong_seed",
    [("absorb", "loglinear", "importance", 6), ("uniform", "geometric", "stratified", 7)],
)
def test_conditional_bound_matches_enumeration(graph_name, noise_name, design, wrong_seed):
    """The truth inside every request's interval; a different model's exact value (another
    random distribution, >= 0.6 nats away on every request) outside."""
    scorer = EnumerableScorer(graph_name, noise_name, tokens=3, length=3)
    wrong = EnumerableScorer(graph_name, noise_name, tokens=3, length=3, seed=wrong_seed)
    clean = scorer.clean_blocks()
    cases = [(clean[5], 1), (clean[17], 2), (clean[22], 0)]
    requests = [(x0[:c].tolist(), x0[c:].tolist()) for x0, c in cases]
    bounds = evaluate_conditional(
        scorer,
        requests,
        design=design,
        num_t_samples=1000,
        tail_samples=100,
        seed=0,
        batch_size=512,
    )
    truths = [exact_conditional(scorer, x0, c) for x0, c in cases]
    wrongs = [exact_conditional(wrong, x0, c) for x0, c in cases]
    for bound, truth, bad in zip(bounds, truths, wrongs, strict=True):
        lo, hi = bound.summary()["ci_loglikelihood"]
        assert lo <= -truth <= hi, (truth, bound.summary())
        assert not lo <= -bad <= hi, (bad, bound.summary())
    # a sum over requests (a rolling document's windows) keeps the truth inside its interval
    lo, hi = total_bound(bounds)["ci_loglikelihood"]
    assert lo <= -sum(truths) <= hi


@pytest.mark.parametrize("model, design", [("tiny_absorb", "importance"), ("tiny_uniform", "mc")])
def test_empty_context_is_the_unconditional_bound(model, design):
    from sedd_megatron.models.score_model import PlainScoreModel

    scorer = PlainScoreModel.from_pretrained(CONFORMANCE / model)
    blocks = torch.randint(0, 1000, (3, 32), generator=torch.Generator().manual_seed(0))
    args = dict(design=design, num_t_samples=8, seed=3, batch_size=6, tail_samples=4)
    ref = evaluate_elbo(scorer, blocks, progress=False, **args)
    got = evaluate_conditional(scorer, [([], b.tolist()) for b in blocks], **args)
    pairs = [(r, g.main) for r, g in zip(ref.blocks, got, strict=True)]
    pairs += [(r, g.tail) for r, g in zip(ref.tail, got, strict=True)]
    for x, y in pairs:
        np.testing.assert_array_equal(x.t, y.t)
        np.testing.assert_array_equal(x.weight, y.weight)
        np.testing.assert_array_equal(x.count, y.count)
        np.testing.assert_array_equal(x.loss, y.loss)
    complete = ref.summary()["complete"]["nats_per_token"] * blocks.numel()
    ours = -total_bound(got)["loglikelihood"]
    assert ours == pytest.approx(complete, rel=1e-12)


def test_bad_requests():
    scorer = EnumerableScorer("absorb", "loglinear", tokens=3, length=3)
    with pytest.raises(EvalError, match="continuation is empty"):
        evaluate_conditional(scorer, [([0], [])])
    with pytest.raises(EvalError, match="exceed the model's length 3"):
        evaluate_conditional(scorer, [([0, 1], [1, 2])])
    with pytest.raises(EvalError, match=r"token ids must be in \[0, 3\)"):
        evaluate_conditional(scorer, [([0], [3])])
