"""The batched ELBO estimator: a design's draws on token blocks -> per-block losses.

``model`` is a :class:`~sedd_megatron.models.score_model.ScoreModel` (anything with ``graph``,
``noise``, ``reports`` and ``score_entropy(x_t, sigma, x0)``); every rank of a model replica
must make the same calls. Batches may span blocks; each block's draws are its own
(:mod:`sedd_megatron.evaluation.draws`).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from sedd_megatron.errors import EvalError
from sedd_megatron.evaluation.designs import Design
from sedd_megatron.evaluation.draws import BlockDraws, Draws, block_generator, perturb
from sedd_megatron.models.score_model import to_device


def evaluate_draws(model, x0: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Per-sequence losses sum_l sigma_bar'(t) SE_l for given t (n,) and x_t (n, L): the
    reference's loss with its random draws replaced (float64 sum of the float32 terms)."""
    sigma, dsigma = model.noise(t.double())
    se = model.score_entropy(x_t, sigma.float(), x0)
    if se is None:
        return None
    return (to_device(dsigma, se.device)[:, None] * se.double()).sum(-1)


def evaluate_blocks(
    model,
    blocks: torch.Tensor,
    design: Design,
    *,
    seed: int = 0,
    batch_size: int = 8,
    block_ids: list[int] | None = None,
    progress: bool = True,
    desc: str = "ELBO",
    noise=None,
    stream: int = 0,
) -> list[BlockDraws]:
    """Evaluate ``design`` on ``blocks[block_ids]`` (default: all); batches may span blocks.

    ``noise`` (default: the model's) maps the design's t to (total noise, rate);
    ``stream``: the blocks' generator stream (:func:`~.draws.block_generator`). Returns the
    BlockDraws of the evaluated blocks on reporting ranks, [] elsewhere.
    """
    if batch_size < 1:
        raise EvalError(f"batch_size must be positive, got {batch_size}")
    ids = list(range(blocks.shape[0])) if block_ids is None else list(block_ids)
    graph, noise = model.graph, model.noise if noise is None else noise
    per_block = design.evaluations
    pending: list[tuple] = []  # (block, offset, x0, x_t, sigma32, dsigma) chunks
    losses: dict[int, torch.Tensor] = {}  # on the device of the model's output
    sizes: dict[int, int] = {}
    meta: dict[int, tuple[Draws, torch.Tensor]] = {}
    bar = tqdm(total=len(ids) * per_block, desc=desc, unit="eval", disable=not progress)

    def run(rows: list[tuple]):
        x0 = torch.cat([r[2] for r in rows])
        x_t = torch.cat([r[3] for r in rows])
        sigma = torch.cat([r[4] for r in rows])
        dsigma = torch.cat([r[5] for r in rows])
        se = model.score_entropy(x_t, sigma, x0)
        bar.update(x0.shape[0])
        if se is None:
            return
        # stays on the model's device: no host synchronisation per batch
        loss = (to_device(dsigma, se.device)[:, None] * se.double()).sum(-1)
        start = 0
        for block, offset, part, *_ in rows:
            n = part.shape[0]
            if block not in losses:
                losses[block] = loss.new_empty(sizes[block])
            losses[block][offset : offset + n] = loss[start : start + n]
            start += n

    for b in ids:
        gen = block_generator(seed, b, stream)
        draws = design.draw(gen)
        t = draws.t.flatten()
        sigma, dsigma = noise(t)
        x0 = blocks[b].expand(t.numel(), -1)
        count = None if draws.count is None else draws.count.flatten()
        x_t = perturb(graph, x0, sigma, count, gen)
        counted = (x_t != x0).sum(-1) if count is None else count
        meta[b] = (draws, counted)
        sizes[b] = t.numel()
        sigma32 = sigma.float()
        for start in range(0, t.numel(), batch_size):
            stop = start + batch_size
            pending.append(
                (b, start, x0[start:stop], x_t[start:stop], sigma32[start:stop], dsigma[start:stop])
            )
            while sum(r[2].shape[0] for r in pending) >= batch_size:
                pending = run_full_batch(pending, batch_size, run)
    if pending:
        run(pending)
    bar.close()
    if not model.reports:
        return []
    return block_draws(ids, meta, losses)


def block_draws(ids, meta: dict, losses: dict) -> list[BlockDraws]:
    """The BlockDraws of blocks ``ids``: ``meta[b]`` holds (draws, counted tokens) and
    ``losses[b]`` the flat per-draw losses, in the draws' order (the one copy to the host)."""
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
                loss=losses[b].view(shape).cpu().numpy(),
            )
        )
    return out


def run_full_batch(pending, batch_size, run):
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
