"""The conditional ELBO: a lower bound on log p(continuation | context) (docs/math.md §6.6).

Only the continuation's positions are noised; the context stays clean in every x_t, and the
loss sums the score entropy over the continuation's positions only. Everything else is the
unconditional harness's: the designs (built for the continuation's length), the per-request
generators (request i draws from :func:`~.draws.block_generator` (seed, i), so an empty context
gives the unconditional bound of the same block draw for draw), float64 accumulation, the
[0, t_eps] term (its own stream) and the exact prior term, and the confidence intervals of
:mod:`~.stats`.

Requests of the same total length are batched together across requests and t-samples; every
rank of a model replica must make the same calls (data-parallel replicas split the requests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sedd_megatron.errors import EvalError
from sedd_megatron.evaluation.designs import build_design, build_tail_design
from sedd_megatron.evaluation.draws import TAIL_STREAM, BlockDraws, block_generator, perturb
from sedd_megatron.evaluation.estimator import block_draws, gather_blocks, run_full_batch
from sedd_megatron.evaluation.settings import check_elbo_settings, default_tail_samples
from sedd_megatron.evaluation.stats import SumEstimate, combine_replicates, scaled_sum
from sedd_megatron.models.score_model import to_device


@dataclass
class ConditionalBound:
    """One request's draws and its bound; every number is in nats for the whole continuation."""

    index: int
    context_length: int
    continuation_length: int
    main: BlockDraws  # the [t_eps, 1] term's draws (E_{t ~ U(eps, 1)}, the paper's convention)
    tail: BlockDraws | None  # the [0, t_eps] term's draws (None: not estimated)
    prior_nats: float  # exact prior term of the continuation (L_c x prior_kl)
    eps: float

    def complete(self) -> SumEstimate:
        """(1 - eps) main + tail + prior: the complete bound on -log p(cont | ctx)."""
        main = combine_replicates([self.main.replicate_estimates])
        parts = [(1.0 - self.eps, main), (1.0, SumEstimate(self.prior_nats, 0.0, math.inf, 1))]
        if self.tail is not None:
            parts.append((1.0, combine_replicates([self.tail.replicate_estimates])))
        return scaled_sum(parts)

    def summary(self, level: float = 0.95) -> dict:
        """The log-likelihood bound -complete (a lower bound on log p(cont | ctx) when the tail
        is estimated) with its confidence interval, and the paper's term alone."""
        est = self.complete()
        half = est.half_width(level)
        paper = combine_replicates([self.main.replicate_estimates])
        paper_half = paper.half_width(level)
        return {
            "loglikelihood": -est.total,
            "ci_loglikelihood": [-est.total - half, -est.total + half],
            "stderr": est.stderr,
            "confidence_level": level,
            "paper_nats": paper.total,
            "ci_paper_nats": [paper.total - paper_half, paper.total + paper_half],
            "prior_nats": self.prior_nats,
            "tail_nats": None if self.tail is None else self.tail.estimate,
            "context_tokens": self.context_length,
            "continuation_tokens": self.continuation_length,
            "evaluations": int(
                self.main.loss.size + (0 if self.tail is None else self.tail.loss.size)
            ),
        }


def _check_requests(model, requests) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i, (context, continuation) in enumerate(requests):
        ctx = torch.as_tensor(list(context), dtype=torch.int64)
        cont = torch.as_tensor(list(continuation), dtype=torch.int64)
        if cont.numel() == 0:
            raise EvalError(f"request {i}: the continuation is empty")
        if ctx.numel() + cont.numel() > model.seq_length:
            raise EvalError(
                f"request {i}: {ctx.numel()} context + {cont.numel()} continuation tokens exceed "
                f"the model's length {model.seq_length}"
            )
        both = torch.cat([ctx, cont])
        if int(both.min()) < 0 or int(both.max()) >= model.num_tokens:
            raise EvalError(
                f"request {i}: token ids must be in [0, {model.num_tokens}), got "
                f"[{int(both.min())}, {int(both.max())}]"
            )
        out.append((ctx, cont))
    return out


def _evaluate(model, items, ids, design_for, *, seed, stream, noise, batch_size, bar):
    """BlockDraws of requests ``ids`` (reporting ranks; [] elsewhere) for the designs
    ``design_for(continuation length)``, batched over requests of equal total length."""
    graph = model.graph
    pending: dict[int, list[tuple]] = {}  # total length -> rows (id, offset, x0, x_t, mask, s, ds)
    losses: dict[int, torch.Tensor] = {}
    meta: dict[int, tuple] = {}

    def run(rows):
        x0 = torch.cat([r[2] for r in rows])
        x_t = torch.cat([r[3] for r in rows])
        mask = torch.cat([r[4] for r in rows])
        sigma = torch.cat([r[5] for r in rows])
        dsigma = torch.cat([r[6] for r in rows])
        se = model.score_entropy(x_t, sigma, x0)
        bar.update(x0.shape[0])
        if se is None:
            return
        weight = to_device(dsigma[:, None] * mask, se.device)  # float64; 0 on the context
        loss = (weight * se.double()).sum(-1)
        start = 0
        for i, offset, part, *_ in rows:
            n = part.shape[0]
            if i not in losses:
                losses[i] = loss.new_empty(meta[i][0].t.numel())
            losses[i][offset : offset + n] = loss[start : start + n]
            start += n

    for i in ids:
        ctx, cont = items[i]
        design = design_for(cont.numel())
        gen = block_generator(seed, i, stream)
        draws = design.draw(gen)
        t = draws.t.flatten()
        sigma, dsigma = noise(t)
        n = t.numel()
        c0 = cont.expand(n, -1)
        count = None if draws.count is None else draws.count.flatten()
        c_t = perturb(graph, c0, sigma, count, gen)
        counted = (c_t != c0).sum(-1) if count is None else count
        meta[i] = (draws, counted)
        x0 = torch.cat([ctx.expand(n, -1), c0], dim=1)
        x_t = torch.cat([ctx.expand(n, -1), c_t], dim=1)
        mask = torch.zeros(x0.shape, dtype=torch.float64)
        mask[:, ctx.numel() :] = 1.0
        queue = pending.setdefault(x0.shape[1], [])
        sigma32 = sigma.float()
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            queue.append((i, start, x0[sl], x_t[sl], mask[sl], sigma32[sl], dsigma[sl]))
            while sum(r[2].shape[0] for r in queue) >= batch_size:
                queue[:] = run_full_batch(queue, batch_size, run)
    for length in sorted(pending):  # the same order on every rank
        if pending[length]:
            run(pending[length])
    if not model.reports:
        return []
    return block_draws(ids, meta, losses)


def evaluate_conditional(
    model,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    design: str = "importance",
    num_t_samples: int = 100,
    replicates: int | None = None,
    t_eps: float = 1e-3,
    seed: int = 0,
    batch_size: int = 32,
    tail_samples: int | None = None,
    progress: bool = False,
) -> list[ConditionalBound]:
    """The conditional bound of every (context ids, continuation ids) request, on every rank.

    ``design`` / ``num_t_samples`` / ``replicates`` / ``t_eps``: the [t_eps, 1] term's design
    (:func:`~.designs.build_design`, for the continuation's length); ``tail_samples``: the
    [0, t_eps] term's evaluations per request (default 2% of num_t_samples, at least 2; 0: off,
    and the bound is then the paper's incomplete one). Request i draws from generator (seed, i)
    (tail: (seed, i, 1)). Context + continuation must fit in the model's length."""
    check_elbo_settings(
        num_t_samples=num_t_samples,
        design=design,
        replicates=replicates,
        t_eps=t_eps,
        batch_size=batch_size,
        tail_samples=tail_samples,
    )
    items = _check_requests(model, requests)
    if not items:
        return []
    if tail_samples is None:
        tail_samples = default_tail_samples(num_t_samples)
    designs, tails = {}, {}

    def main_design(length):
        if length not in designs:
            designs[length] = build_design(
                design,
                num_t_samples,
                model.graph,
                model.noise,
                length,
                replicates=replicates,
                eps=t_eps,
            )
        return designs[length]

    def tail_design(length):
        if length not in tails:
            tails[length] = build_tail_design(
                tail_samples, model.graph, model.noise, length, eps=t_eps
            )
        return tails[length]

    ids = list(range(model.dp_rank, len(items), model.dp_size))
    show = progress and (
        not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    )
    per_request = num_t_samples + tail_samples
    bar = tqdm(total=len(ids) * per_request, desc="conditional ELBO", disable=not show)
    common = dict(seed=seed, batch_size=batch_size, bar=bar)
    main = gather_blocks(
        _evaluate(model, items, ids, main_design, stream=0, noise=model.noise, **common)
    )
    tail = None
    if tail_samples:
        sigma_noise = tail_design(items[0][1].numel()).noise
        tail = gather_blocks(
            _evaluate(
                model, items, ids, tail_design, stream=TAIL_STREAM, noise=sigma_noise, **common
            )
        )
    bar.close()
    sigma_1 = float(model.noise(torch.tensor(1.0, dtype=torch.float64))[0])
    prior_per_token = float(model.graph.prior_kl(sigma_1))
    out = []
    for i, (ctx, cont) in enumerate(items):
        out.append(
            ConditionalBound(
                index=i,
                context_length=int(ctx.numel()),
                continuation_length=int(cont.numel()),
                main=main[i],
                tail=None if tail is None else tail[i],
                prior_nats=prior_per_token * cont.numel(),
                eps=t_eps,
            )
        )
    return out


def total_bound(bounds: Sequence[ConditionalBound], level: float = 0.95) -> dict:
    """The sum of several requests' bounds (e.g. the windows of one document): the
    log-likelihood bound and its confidence interval (independent Monte-Carlo errors)."""
    est = scaled_sum([(1.0, b.complete()) for b in bounds])
    half = est.half_width(level) if bounds else 0.0
    return {
        "loglikelihood": -est.total,
        "ci_loglikelihood": [-est.total - half, -est.total + half],
        "stderr": est.stderr,
        "tokens": int(sum(b.continuation_length for b in bounds)),
    }
