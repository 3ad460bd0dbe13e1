"""Likelihood bounds of SEDD models: the ELBO per token, perplexity bounds with confidence
intervals, the ELBO integrand over t, and a variance comparison of t-designs.

Protocol (the paper's, SEDD_SPEC.md section 5, all configurable): GPT-2 tokens with EOS after
every document, packed into blocks of the model's length, t in [1e-3, 1], 1000 Monte-Carlo
t-samples per block, perplexity bound = exp(sum of block ELBOs / sum of tokens).

Determinism: the draws of block b (t, counts, x_t) come from a generator seeded with
(seed, b) only, so results do not depend on the batch size, the data-parallel layout, or which
blocks are evaluated together; TP/PP layouts change only floating-point rounding.

Entry points: :func:`evaluate_elbo` (a scorer and token blocks -> :class:`ElboResult`),
:func:`elbo_report` (a model path and a data name -> a summary dict, single process) and
:func:`compare_designs` (variance per model evaluation of several designs on the same blocks).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from sedd_megatron.evaluation.designs import Design, Draws, build_design
from sedd_megatron.evaluation.errors import EvalError
from sedd_megatron.evaluation.stats import combine_replicates

LN2 = math.log(2.0)


def block_generator(seed: int, block: int) -> torch.Generator:
    """The CPU generator of one block's draws: a hash of (seed, block)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(block)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def perturb(graph, x0: torch.Tensor, sigma: torch.Tensor, count, generator) -> torch.Tensor:
    """x_t ~ p_{t|0}(. | x0) for rows x0 (n, L) at total noise sigma (n,).

    With ``count`` None, the graph's forward process (i.i.d. corruption); otherwise exactly
    count[i] positions of row i, a uniform random subset, are corrupted (MASK, or a uniform
    redraw for the uniform graph): the forward process conditioned on the number of corrupted
    positions.
    """
    if count is None:
        return graph.sample_transition(x0, sigma[:, None], generator=generator)
    keys = torch.rand(x0.shape, generator=generator, dtype=torch.float64)
    ranks = keys.argsort(-1).argsort(-1)
    corrupt = ranks < count[:, None]
    if graph.absorb:
        return torch.where(corrupt, torch.full_like(x0, graph.dim - 1), x0)
    new = torch.randint(0, graph.dim, x0.shape, generator=generator)
    return torch.where(corrupt, new, x0)


@dataclass
class BlockDraws:
    """Everything drawn and measured for one block; arrays are (replicates, points)."""

    block: int
    t: np.ndarray
    weight: np.ndarray
    count: np.ndarray  # corrupted positions (given, or counted where x_t != x0)
    loss: np.ndarray  # sum_l sigma_bar'(t) SE_l, nats per block

    @property
    def replicate_estimates(self) -> np.ndarray:
        return (self.weight * self.loss).mean(axis=1)

    @property
    def estimate(self) -> float:
        return float(self.replicate_estimates.mean())

    def to_dict(self, draws: bool = False) -> dict:
        reps = self.replicate_estimates
        out = {
            "block": self.block,
            "elbo_nats": float(reps.mean()),
            "stderr_nats": (
                float(reps.std(ddof=1) / math.sqrt(reps.size)) if reps.size > 1 else None
            ),
            "evaluations": int(self.loss.size),
        }
        if draws:
            out.update(
                t=self.t.tolist(),
                weight=self.weight.tolist(),
                count=self.count.tolist(),
                loss=self.loss.tolist(),
            )
        return out


def evaluate_draws(scorer, x0: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Per-sequence losses sum_l sigma_bar'(t) SE_l for given t (n,) and x_t (n, L): the
    reference's loss with its random draws replaced (float64 sum of the float32 terms)."""
    sigma, dsigma = scorer.noise(t.double())
    se = scorer(x_t, sigma.float(), x0)
    if se is None:
        return None
    return (dsigma[:, None] * se.double()).sum(-1)


def evaluate_blocks(
    scorer,
    blocks: torch.Tensor,
    design: Design,
    *,
    seed: int = 0,
    batch_size: int = 8,
    block_ids: list[int] | None = None,
    progress: bool = True,
    desc: str = "ELBO",
) -> list[BlockDraws]:
    """Evaluate ``design`` on ``blocks[block_ids]`` (default: all); batches may span blocks.

    Returns the BlockDraws of the evaluated blocks on reporting ranks, [] elsewhere.
    """
    if batch_size < 1:
        raise EvalError(f"batch_size must be positive, got {batch_size}")
    ids = list(range(blocks.shape[0])) if block_ids is None else list(block_ids)
    graph, noise = scorer.graph, scorer.noise
    per_block = design.evaluations
    pending: list[tuple] = []  # (block, offset, x0, x_t, sigma32, dsigma) chunks
    losses: dict[int, torch.Tensor] = {}
    meta: dict[int, tuple[Draws, torch.Tensor]] = {}
    bar = tqdm(total=len(ids) * per_block, desc=desc, unit="eval", disable=not progress)

    def run(rows: list[tuple]):
        x0 = torch.cat([r[2] for r in rows])
        x_t = torch.cat([r[3] for r in rows])
        sigma = torch.cat([r[4] for r in rows])
        dsigma = torch.cat([r[5] for r in rows])
        se = scorer(x_t, sigma, x0)
        bar.update(x0.shape[0])
        if se is None:
            return
        loss = (dsigma[:, None] * se.double()).sum(-1)
        start = 0
        for block, offset, part, *_ in rows:
            n = part.shape[0]
            losses[block][offset : offset + n] = loss[start : start + n]
            start += n

    for b in ids:
        gen = block_generator(seed, b)
        draws = design.draw(gen)
        t = draws.t.flatten()
        sigma, dsigma = noise(t)
        x0 = blocks[b].expand(t.numel(), -1)
        count = None if draws.count is None else draws.count.flatten()
        x_t = perturb(graph, x0, sigma, count, gen)
        counted = (x_t != x0).sum(-1) if count is None else count
        meta[b] = (draws, counted)
        losses[b] = torch.empty(t.numel(), dtype=torch.float64)
        sigma32 = sigma.float()
        for start in range(0, t.numel(), batch_size):
            stop = start + batch_size
            pending.append(
                (b, start, x0[start:stop], x_t[start:stop], sigma32[start:stop], dsigma[start:stop])
            )
            while sum(r[2].shape[0] for r in pending) >= batch_size:
                pending = _run_full_batch(pending, batch_size, run)
    if pending:
        run(pending)
    bar.close()
    if not scorer.reports:
        return []
    out = []
    for b in ids:
        draws, counted = meta[b]
        shape = draws.shape
        out.append(
            BlockDraws(
                block=b,
                t=draws.t.numpy(),
                weight=draws.weight.numpy(),
                count=counted.view(shape).numpy(),
                loss=losses[b].view(shape).numpy(),
            )
        )
    return out


def _run_full_batch(pending, batch_size, run):
    """Run exactly batch_size rows from the front of ``pending``; return what is left."""
    rows, left, n = [], [], 0
    for r in pending:
        size = r[2].shape[0]
        if n >= batch_size:
            left.append(r)
        elif n + size <= batch_size:
            rows.append(r)
            n += size
        else:
            cut = batch_size - n
            b, offset, *tensors = r
            rows.append((b, offset, *(v[:cut] for v in tensors)))
            left.append((b, offset + cut, *(v[cut:] for v in tensors)))
            n = batch_size
    run(rows)
    return left


def gather_blocks(results: list[BlockDraws]) -> list[BlockDraws]:
    """All ranks' BlockDraws on every rank (sorted by block; no-op without torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, results)
        merged = {r.block: r for part in parts for r in part}
        return [merged[b] for b in sorted(merged)]
    return sorted(results, key=lambda r: r.block)


@dataclass
class ElboResult:
    """Per-block draws and the settings that produced them."""

    blocks: list[BlockDraws]
    seq_length: int
    settings: dict = field(default_factory=dict)
    level: float = 0.95

    def summary(self) -> dict:
        """nats/token, bits/token, perplexity bound, CI (Monte-Carlo error, data held fixed)."""
        if not self.blocks:
            raise EvalError("no evaluated blocks")
        est = combine_replicates([b.replicate_estimates for b in self.blocks])
        tokens = len(self.blocks) * self.seq_length
        nats = est.total / tokens
        half = est.half_width(self.level) / tokens
        evaluations = int(sum(b.loss.size for b in self.blocks))
        per_block = np.array([b.estimate / self.seq_length for b in self.blocks])
        stderr = est.stderr / tokens
        return {
            "nats_per_token": nats,
            "bits_per_token": nats / LN2,
            "ppl_bound": math.exp(nats),
            "confidence_level": self.level,
            "ci_nats_per_token": [nats - half, nats + half],
            "ci_bits_per_token": [(nats - half) / LN2, (nats + half) / LN2],
            "ci_ppl_bound": [math.exp(nats - half), math.exp(nats + half)],
            "ci_half_width_nats": half,
            "stderr_nats_per_token": stderr,
            "dof": est.dof,
            "blocks": len(self.blocks),
            "tokens": tokens,
            "evaluations": evaluations,
            # evaluations x variance: the cost of a given CI width (lower is better)
            "variance_x_evaluations": stderr**2 * evaluations,
            "block_nats_per_token_sd": float(per_block.std(ddof=1)) if per_block.size > 1 else 0.0,
        }

    def to_json(self, path: str | os.PathLike | None = None, draws: bool = False) -> dict:
        doc = {
            "settings": self.settings,
            "result": self.summary(),
            "blocks": [b.to_dict(draws) for b in self.blocks],
        }
        if path is not None:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=1, default=_jsonable)
                f.write("\n")
            os.replace(tmp, path)
        return doc

    def integrand_curve(self, bins: int = 24) -> dict:
        """Binned estimate of the per-token integrand sigma_bar'(t) E[SE] / L over log-spaced
        t-bins: sum of w * loss in a bin / (draws * bin width) * (1 - eps), averaged over blocks
        (valid for every design, since w is the density ratio to t ~ U(eps, 1)). Bins without
        draws are NaN."""
        eps = float(self.settings.get("t_eps", 1e-3))
        edges = np.geomspace(eps, 1.0, bins + 1)
        acc, hits = np.zeros(bins), np.zeros(bins)
        for b in self.blocks:
            idx = np.clip(np.searchsorted(edges, b.t.ravel(), side="right") - 1, 0, bins - 1)
            np.add.at(acc, idx, (b.weight * b.loss).ravel() / b.loss.size)
            np.add.at(hits, idx, 1)
        acc *= (1 - eps) / (np.diff(edges) * len(self.blocks) * self.seq_length)
        acc[hits == 0] = np.nan
        centers = np.sqrt(edges[1:] * edges[:-1])
        return {"t": centers, "integrand": acc, "edges": edges, "draws": hits}

    def plot(self, path: str | os.PathLike, title: str | None = None, max_points: int = 20000):
        """PNG: per-draw sigma_bar'(t) * sum_l SE_l / L against t (log t), the binned integrand
        and the ELBO (its mean over t)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = np.concatenate([b.t.ravel() for b in self.blocks])
        y = np.concatenate([b.loss.ravel() for b in self.blocks]) / self.seq_length
        if t.size > max_points:
            pick = np.random.default_rng(0).choice(t.size, max_points, replace=False)
            t, y = t[pick], y[pick]
        bins = int(np.clip(t.size // 10, 6, 30))
        curve = self.integrand_curve(bins)
        s = self.summary()
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        ax.scatter(t, y, s=4, alpha=0.3, color="tab:blue", label="draws (unweighted)")
        ok = np.isfinite(curve["integrand"])
        ax.plot(
            curve["t"][ok],
            curve["integrand"][ok],
            "o-",
            color="tab:red",
            lw=2,
            ms=3,
            label="integrand (binned estimate)",
        )
        ax.axhline(
            s["nats_per_token"],
            color="k",
            ls="--",
            lw=1,
            label=f"ELBO {s['nats_per_token']:.3f} nats/token",
        )
        top = np.nanpercentile(np.concatenate([y, curve["integrand"][ok]]), 99)
        ax.set_ylim(0, 1.25 * max(top, s["nats_per_token"]))
        ax.set_xscale("log")
        ax.set_xlabel("t")
        ax.set_ylabel(r"$\bar\sigma'(t)\,\sum_l \mathrm{SE}_l\,/\,L$  (nats/token)")
        design = self.settings.get("design", "")
        ax.set_title(title or f"SEDD ELBO integrand ({design}, {s['blocks']} blocks)")
        ax.legend(loc="best", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def evaluate_elbo(
    scorer,
    blocks: torch.Tensor,
    *,
    design: str | Design = "mc",
    num_t_samples: int = 1000,
    replicates: int | None = None,
    t_eps: float = 1e-3,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    level: float = 0.95,
) -> ElboResult:
    """The ELBO of ``blocks`` (n, L) under ``scorer``, data parallel over blocks if the scorer
    has dp_size > 1; every rank returns the full result."""
    if blocks.ndim != 2 or blocks.shape[0] == 0:
        raise EvalError(
            f"expected a non-empty (blocks, seq_length) tensor, got {tuple(blocks.shape)}"
        )
    if int(blocks.max()) >= scorer.num_tokens or int(blocks.min()) < 0:
        raise EvalError(
            f"token ids must be in [0, {scorer.num_tokens}) for this model, got "
            f"[{int(blocks.min())}, {int(blocks.max())}]"
        )
    if isinstance(design, str):
        try:
            design = build_design(
                design,
                num_t_samples,
                scorer.graph,
                scorer.noise,
                blocks.shape[1],
                replicates=replicates,
                eps=t_eps,
            )
        except ValueError as err:
            raise EvalError(str(err)) from None
    ids = list(range(scorer.dp_rank, blocks.shape[0], scorer.dp_size))
    show = progress and (
        not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    )
    local = evaluate_blocks(
        scorer, blocks, design, seed=seed, batch_size=batch_size, block_ids=ids, progress=show
    )
    results = gather_blocks(local)
    settings = {
        **design.describe(),
        "num_t_samples": design.evaluations,
        "seed": seed,
        "batch_size": batch_size,
        "seq_length": int(blocks.shape[1]),
        "graph": type(scorer.graph).__name__,
        "noise": repr(scorer.noise),
        "model": getattr(scorer, "description", {}),
    }
    return ElboResult(results, int(blocks.shape[1]), settings, level)


def compare_designs(
    scorer,
    blocks: torch.Tensor,
    designs: dict[str, dict],
    *,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Run several designs on the same blocks; report each one's variance x evaluations and the
    factor by which it needs fewer model evaluations than the first (the baseline) for the same
    confidence-interval half-width.

    ``designs``: name -> keyword arguments of :func:`evaluate_elbo` (design, num_t_samples,
    replicates, t_eps).
    """
    rows = {}
    for name, kwargs in designs.items():
        result = evaluate_elbo(
            scorer, blocks, seed=seed, batch_size=batch_size, progress=progress, **kwargs
        )
        rows[name] = {"settings": result.settings, **result.summary()}
    base = next(iter(rows.values()))["variance_x_evaluations"]
    for row in rows.values():
        row["evaluation_savings_factor"] = base / row["variance_x_evaluations"]
    return rows


def elbo_report(
    model_source: str | os.PathLike,
    data: str = "ptb-valid",
    *,
    num_t_samples: int = 1000,
    max_blocks: int | None = None,
    design: str = "mc",
    replicates: int | None = None,
    t_eps: float = 1e-3,
    seq_length: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    json_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
    progress: bool = True,
    iteration: int | None = None,
    use_ema: bool | None = None,
) -> dict:
    """The ELBO of a model on a dataset, in this process (e.g. at the end of the quickstart).

    ``model_source``: a published-layout directory (evaluated with the plain PyTorch model) or
    a pretrain_sedd.py checkpoint directory (needs ``sedd_megatron.checkpoint``; a one-process
    gloo/NCCL world is started here if none exists). ``data``: ptb-test/ptb-valid/ptb-train, a
    text/JSONL file or an indexed dataset prefix. Returns the summary dict (see
    :meth:`ElboResult.summary`) plus ``data`` and ``settings``.
    """
    from sedd_megatron.evaluation.data import load_eval_data
    from sedd_megatron.evaluation.models import is_plain_dir, megatron_scorer, plain_scorer

    started = False
    if is_plain_dir(model_source):
        scorer = plain_scorer(model_source)
    else:
        if not os.path.exists(model_source):
            raise EvalError(f"model not found: {model_source}")
        if not torch.distributed.is_initialized():
            from sedd_megatron.runtime import init_distributed

            init_distributed(tp=1, pp=1, seed=seed)
            started = True
        scorer = megatron_scorer(
            model_source, iteration=iteration, use_ema=use_ema, seq_length=seq_length
        )
    try:
        length = seq_length or scorer.seq_length
        eval_data = load_eval_data(
            data, length, max_blocks=max_blocks, vocab_size=scorer.num_tokens
        )
        result = evaluate_elbo(
            scorer,
            eval_data.blocks,
            design=design,
            num_t_samples=num_t_samples,
            replicates=replicates,
            t_eps=t_eps,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
        )
        result.settings["data"] = eval_data.summary()
        if json_path is not None:
            result.to_json(json_path)
        if plot_path is not None:
            result.plot(plot_path)
        return {**result.summary(), "data": eval_data.summary(), "settings": result.settings}
    finally:
        if started:
            from sedd_megatron.runtime import destroy_distributed

            destroy_distributed()
