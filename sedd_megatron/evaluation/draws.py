"""The random draws of the ELBO estimator, block by block: the evaluation points a design draws
(:class:`Draws`) and everything drawn and measured for a block (:class:`BlockDraws`).

The draws of block b (t, counts, x_t) come from a generator seeded with (seed, b) only, so
results do not depend on the batch size, the data-parallel layout, or which blocks are
evaluated together. The [0, t_eps] term draws from a separate stream of each block,
(seed, b, TAIL_STREAM), so adding it leaves the main term's draws unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: The stream of the [0, t_eps] term's draws (the main term's is stream 0).
TAIL_STREAM = 1


def block_generator(seed: int, block: int, stream: int = 0) -> torch.Generator:
    """The CPU generator of one block's draws: a hash of (seed, block), or of (seed, block,
    stream) for another stream of the same block (``stream`` > 0; independent of stream 0)."""
    entropy = [int(seed) & 0xFFFFFFFF, int(block)]
    if stream:
        entropy.append(int(stream))
    state = np.random.SeedSequence(entropy).generate_state(2)
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
    return graph.corrupt(x0, corrupt, generator=generator)


@dataclass
class Draws:
    """The evaluation points of one block: (replicates, points) tensors."""

    t: torch.Tensor  # float64
    weight: torch.Tensor  # float64
    count: torch.Tensor | None = None  # int64 number of corrupted positions, or None (i.i.d.)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.t.shape)


@dataclass
class BlockDraws:
    """Everything drawn and measured for one block; arrays are (replicates, points)."""

    block: int
    t: np.ndarray  # diffusion time (the tail term's draws: total noise sigma)
    weight: np.ndarray
    count: np.ndarray  # corrupted positions (given, or counted where x_t != x0)
    loss: np.ndarray  # sum_l sigma_bar'(t) SE_l, nats per block (the tail's: sum_l SE_l)

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
