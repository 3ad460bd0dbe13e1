"""ELBO results and reports: :class:`ElboResult`, :func:`evaluate_elbo` (a score model and
token blocks -> result), :func:`compare_designs` (variance per model evaluation of several
designs on the same blocks) and :func:`elbo_report` (a model and a data name -> a summary dict;
what ``tools/eval_elbo_sedd.py`` prints).

Protocol (the paper's, docs/math.md §6.2, all configurable): GPT-2 tokens with EOS after
every document, packed into blocks of the model's length, t in [1e-3, 1], 1000 Monte-Carlo
t-samples per block, perplexity bound = exp(sum of block ELBOs / sum of tokens). The two terms
the paper drops are reported beside it (docs/math.md §6.5): the prior term (exact) and the
[0, t_eps] term (a small importance-sampled estimate, 2% of the main evaluations by default),
and the complete bound they make with it.

Determinism: the draws of block b come from a generator seeded with (seed, b) only
(:mod:`~sedd_megatron.evaluation.draws`), so results do not depend on the batch size, the
data-parallel layout, or which blocks are evaluated together; TP/PP layouts change only
floating-point rounding.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sedd_megatron.atomic import atomic_open
from sedd_megatron.checkpoint import open_model
from sedd_megatron.datasets.checks import check_output_file
from sedd_megatron.errors import EvalError
from sedd_megatron.evaluation.data import load_eval_data
from sedd_megatron.evaluation.designs import Design, build_design, build_tail_design
from sedd_megatron.evaluation.draws import TAIL_STREAM, BlockDraws
from sedd_megatron.evaluation.estimator import evaluate_blocks, gather_blocks
from sedd_megatron.evaluation.plots import plot_integrand
from sedd_megatron.evaluation.settings import (
    MIN_REPLICATES,
    check_elbo_settings,
    check_eval_data,
    default_tail_samples,
)
from sedd_megatron.evaluation.stats import (
    complete_summary,
    elbo_summary,
    integrand_curve,
    tail_summary,
)


@dataclass
class ElboResult:
    """Per-block draws and the settings that produced them; ``tail``: the [0, t_eps] term's
    per-block draws (None: not estimated); ``prior``: the exact prior term,
    ``{"nats_per_token": ..., "sigma_total": sigma_bar(1)}``."""

    blocks: list[BlockDraws]
    seq_length: int
    settings: dict = field(default_factory=dict)
    level: float = 0.95
    seconds: float | None = None  # wall time of the evaluation (all ranks, gathered)
    tail: list[BlockDraws] | None = None
    prior: dict | None = None

    def summary(self) -> dict:
        """nats/token, bits/token, perplexity bound, CI (Monte-Carlo error, data held fixed):
        :func:`~sedd_megatron.evaluation.stats.elbo_summary` (the paper's convention, the
        [t_eps, 1] term only). With the prior term known, also ``prior`` (nats/token),
        ``tail`` (:func:`~sedd_megatron.evaluation.stats.tail_summary`, None when not
        estimated) and ``complete`` (:func:`~sedd_megatron.evaluation.stats.complete_summary`
        of the three terms; None without the tail)."""
        if not self.blocks:
            raise EvalError("no evaluated blocks")
        out = elbo_summary(self.blocks, self.seq_length, self.level)
        if self.prior is None:
            return out
        eps = float(self.settings.get("t_eps", 1e-3))
        out["prior"] = dict(self.prior)
        out["tail"] = tail_summary(self.tail, self.seq_length, self.level) if self.tail else None
        out["complete"] = (
            complete_summary(
                self.blocks,
                self.tail,
                self.prior["nats_per_token"],
                self.seq_length,
                eps,
                self.level,
            )
            if self.tail
            else None
        )
        return out

    def to_json(self, path: str | os.PathLike | None = None, draws: bool = False) -> dict:
        doc = {
            "settings": self.settings,
            "result": self.summary(),
            "timing": self.timing(),
            "blocks": [b.to_dict(draws) for b in self.blocks],
        }
        if self.tail:
            doc["tail_blocks"] = [b.to_dict(draws) for b in self.tail]
        if path is not None:
            with atomic_open(path) as f:
                json.dump(doc, f, indent=1, default=_jsonable)
                f.write("\n")
        return doc

    def timing(self) -> dict:
        """Wall seconds and model evaluations per second (every rank's evaluations, the
        [0, t_eps] term's included)."""
        evaluations = sum(int(b.loss.size) for b in self.blocks + (self.tail or []))
        rate = evaluations / self.seconds if self.seconds else None
        return {"seconds": self.seconds, "evaluations_per_second": rate}

    def integrand_curve(self, bins: int = 24) -> dict:
        """The binned integrand over t: :func:`~sedd_megatron.evaluation.stats.integrand_curve`."""
        eps = float(self.settings.get("t_eps", 1e-3))
        return integrand_curve(self.blocks, self.seq_length, eps, bins)

    def plot(self, path: str | os.PathLike, title: str | None = None, max_points: int = 20000):
        """PNG of the integrand: :func:`~sedd_megatron.evaluation.plots.plot_integrand`."""
        return plot_integrand(self, path, title, max_points)


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def evaluate_elbo(
    model,
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
    tail_samples: int | None = None,
) -> ElboResult:
    """The ELBO of ``blocks`` (n, L) under ``model`` (a ScoreModel), data parallel over blocks
    if the model has dp_size > 1; every rank returns the full result.

    Besides the paper's [t_eps, 1] term (``design``), the exact prior term and the [0, t_eps]
    term with ``tail_samples`` model evaluations per block (default: 2% of the design's, at
    least 2; 0: not estimated), drawn from each block's own separate stream: the main term's
    draws are the same with or without it (docs/math.md §6.5)."""
    named = isinstance(design, str)  # else a Design: its own counts are checked below
    check_elbo_settings(
        num_t_samples=num_t_samples if named else MIN_REPLICATES,
        design=design if named else "mc",
        replicates=replicates if named else None,
        t_eps=t_eps,
        batch_size=batch_size,
        level=level,
        tail_samples=tail_samples,
    )
    if not named and design.replicates < MIN_REPLICATES:
        raise EvalError(
            f"design {design.name!r} has {design.replicates} replicate(s) per block; the "
            f"confidence interval needs >= {MIN_REPLICATES}"
        )
    if blocks.ndim != 2 or blocks.shape[0] == 0:
        raise EvalError(
            f"expected a non-empty (blocks, seq_length) tensor, got {tuple(blocks.shape)}"
        )
    if int(blocks.max()) >= model.num_tokens or int(blocks.min()) < 0:
        raise EvalError(
            f"token ids must be in [0, {model.num_tokens}) for this model, got "
            f"[{int(blocks.min())}, {int(blocks.max())}]"
        )
    if isinstance(design, str):
        try:
            design = build_design(
                design,
                num_t_samples,
                model.graph,
                model.noise,
                blocks.shape[1],
                replicates=replicates,
                eps=t_eps,
            )
        except ValueError as err:
            raise EvalError(str(err)) from None
    if tail_samples is None:
        tail_samples = default_tail_samples(design.evaluations)
    try:
        tail = build_tail_design(
            tail_samples, model.graph, model.noise, blocks.shape[1], eps=design.eps
        )
    except ValueError as err:
        raise EvalError(str(err)) from None
    sigma_1 = float(model.noise(torch.tensor(1.0, dtype=torch.float64))[0])
    prior = {"nats_per_token": float(model.graph.prior_kl(sigma_1)), "sigma_total": sigma_1}
    ids = list(range(model.dp_rank, blocks.shape[0], model.dp_size))
    show = progress and (
        not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    )
    start = time.perf_counter()
    local = evaluate_blocks(
        model, blocks, design, seed=seed, batch_size=batch_size, block_ids=ids, progress=show
    )
    results = gather_blocks(local)  # the results are on the host: the device work is done
    tail_results = None
    if tail is not None:
        local = evaluate_blocks(
            model,
            blocks,
            tail,
            seed=seed,
            batch_size=batch_size,
            block_ids=ids,
            progress=show,
            desc="ELBO [0, t_eps]",
            noise=tail.noise,
            stream=TAIL_STREAM,
        )
        tail_results = gather_blocks(local)
    seconds = time.perf_counter() - start
    settings = {
        **design.describe(),
        "num_t_samples": design.evaluations,
        "seed": seed,
        "batch_size": batch_size,
        "seq_length": int(blocks.shape[1]),
        "graph": type(model.graph).__name__,
        "noise": repr(model.noise),
        "model": getattr(model, "description", {}),
        "tail": None if tail is None else {**tail.describe(), "num_samples": tail.evaluations},
    }
    return ElboResult(results, int(blocks.shape[1]), settings, level, seconds, tail_results, prior)


def compare_designs(
    model,
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
    replicates, t_eps; the [0, t_eps] term is not estimated unless ``tail_samples`` is given).
    """
    if not designs:
        raise EvalError("compare_designs needs at least one design")
    rows = {}
    for name, kwargs in designs.items():
        kwargs = {"tail_samples": 0, **kwargs}
        result = evaluate_elbo(
            model, blocks, seed=seed, batch_size=batch_size, progress=progress, **kwargs
        )
        rows[name] = {"settings": result.settings, **result.summary()}
    base = next(iter(rows.values()))["variance_x_evaluations"]
    for row in rows.values():
        row["evaluation_savings_factor"] = base / row["variance_x_evaluations"]
    return rows


def _is_rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def open_eval_model(
    source: str | os.PathLike,
    *,
    backend: str = "auto",
    iteration: int | None = None,
    use_ema: bool | None = None,
    seq_length: int | None = None,
    verify_checksums: bool = True,
):
    """``source`` opened with :func:`sedd_megatron.checkpoint.open_model` (a Megatron checkpoint
    needs the caller's world); EvalError when it does not exist."""
    if not os.path.exists(source):
        raise EvalError(f"model not found: {source}")
    return open_model(
        source,
        backend,
        iteration=iteration,
        use_ema=use_ema,
        seq_length=seq_length,
        verify_checksums=verify_checksums,
    )


def elbo_report(
    model,
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
    backend: str = "auto",
    level: float = 0.95,
    json_key: str = "text",
    per_line: bool = False,
    detokenizer: str = "auto",
    save_draws: bool = False,
    compare: Sequence[str] | None = None,
    tail_samples: int | None = None,
) -> dict:
    """The ELBO of a model on a dataset (e.g. at the end of the quickstart).

    ``model``: an open ScoreModel, or a directory opened with
    :func:`~sedd_megatron.checkpoint.open_model` (``backend``, ``iteration``, ``use_ema``): a
    published-layout directory is evaluated with the plain PyTorch model in this process; a
    pretrain_sedd.py checkpoint needs the caller's Megatron world (``with
    sedd_megatron.runtime.world(): ...``; nothing is started here). ``data``: ptb-test /
    ptb-valid / ptb-train, a text/JSONL file (``json_key``, ``per_line``, ``detokenizer``) or an
    indexed dataset prefix. Returns the summary dict (see :meth:`ElboResult.summary`) plus
    ``data`` and ``settings``; ``json_path`` (with every draw if ``save_draws``) and
    ``plot_path`` are written by global rank 0. ``tail_samples``: the [0, t_eps] term's
    evaluations per block (:func:`evaluate_elbo`; default 2% of ``num_t_samples``, 0: off).

    ``compare``: design names (the first is the baseline) run on the same blocks with
    :func:`compare_designs` instead; returns (and writes to ``json_path``) ``{"data": ...,
    "designs": {name: row}}``.
    """
    check_elbo_settings(
        num_t_samples=num_t_samples,
        design=design,
        replicates=replicates,
        t_eps=t_eps,
        batch_size=batch_size,
        level=level,
        seq_length=seq_length,
        max_blocks=max_blocks,
        compare=compare,
        tail_samples=tail_samples,
    )
    check_eval_data(data, json_key=json_key, detokenizer=detokenizer)
    for path, what in ((json_path, "json_path"), (plot_path, "plot_path")):
        if path is not None:
            check_output_file(path, what, error=EvalError)
    if isinstance(model, (str, os.PathLike)):
        model = open_eval_model(
            model, backend=backend, iteration=iteration, use_ema=use_ema, seq_length=seq_length
        )
    eval_data = load_eval_data(
        data,
        seq_length or model.seq_length,
        max_blocks=max_blocks,
        json_key=json_key,
        per_line=per_line,
        detokenizer=detokenizer,
        vocab_size=model.num_tokens,
    )
    if compare:
        designs = {
            name: dict(design=name, num_t_samples=num_t_samples, replicates=replicates, t_eps=t_eps)
            for name in compare
        }
        rows = compare_designs(
            model, eval_data.blocks, designs, seed=seed, batch_size=batch_size, progress=progress
        )
        doc = {"data": eval_data.summary(), "designs": rows}
        if json_path is not None and _is_rank0():
            with atomic_open(json_path) as f:
                json.dump(doc, f, indent=1, default=str)
        return doc
    result = evaluate_elbo(
        model,
        eval_data.blocks,
        design=design,
        num_t_samples=num_t_samples,
        replicates=replicates,
        t_eps=t_eps,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        level=level,
        tail_samples=tail_samples,
    )
    result.settings["data"] = eval_data.summary()
    if _is_rank0():
        if json_path is not None:
            result.to_json(json_path, draws=save_draws)
        if plot_path is not None:
            result.plot(plot_path)
    return {
        **result.summary(),
        "data": eval_data.summary(),
        "settings": result.settings,
        "timing": result.timing(),
    }
