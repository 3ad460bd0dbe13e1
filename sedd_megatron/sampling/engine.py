"""The sampler engine: the reverse process over a score model, on one rank or TP/PP layers.

Per draw (docs/math.md §5): clamp the prompt positions, compute the transition weights, draw the new
tokens; the prompt is clamped again before the denoiser and on the output. Two modes:

* default (float64, layout-independent): the exponential race argmax_y w_y / E_y with
  E = -log(u) in float64, u a counter-based uniform keyed by (seed, sample index, step, position,
  column) (``rng``). Each tensor-parallel rank races over its own vocabulary shard (weights from
  its scores plus an all-reduced (B, L) sum, ``sampling.step``) and one all-gather of (best value,
  index) per token picks the winner: the vocabulary is never gathered, and no float64 copy of a
  shard is made (``step.race``: one fused pass per token row, a Triton kernel on CUDA, blocks
  of rows in torch elsewhere; no host synchronisation in the step loop). Absorb: only masked
  tokens are drawn (an unmasked token stays with probability 1). Only the last pipeline stage
  draws; the tokens are broadcast to the other stages. Sample i with seed s is the same in any
  batch and on any TP/PP layout, up to the float rounding of the forward pass itself.
* ``fp32_sampling``: the reference's draw (``catsample``) from the global torch RNG, float32
  weights from ``sedd_megatron.diffusion.sampling``. It reproduces the reference's draws
  exactly when the whole vocabulary is on one rank (TP = 1), the global RNG of the model's
  device starts in the reference's state (``seed`` given: ``torch.manual_seed(seed)``; None:
  left as it is) and the batch is the reference's batch, drawn in its order (samples then depend
  on the batch size and composition).

Reused scores (``SamplingOptions.reuse_unchanged``; docs/math.md §5.8): a row in which no
token changed since its last forward pass is not run through the model again; its cached
log-score is moved to the new sigma by log(e^sigma_old - 1) - log(e^sigma_new - 1) on every
column but the current token's (which stays 0). For a time-independent model this is the
model's own output (up to float rounding); the forward pass runs only on the changed rows, or
not at all. The decision depends on the tokens alone, which every rank of a replica shares, so
all ranks take it alike. ``Sampler.stats`` counts the forward passes and the rows they
evaluated.
"""

import contextlib
from collections.abc import Callable, Sequence

import torch

from sedd_megatron.diffusion import (
    PREDICTORS,
    denoiser_probs,
    mask_projector,
    sample_categorical,
    score_log_expm1,
)
from sedd_megatron.errors import ConfigError

from .options import SamplingOptions
from .prompts import Condition
from .rng import LIMIT_STEP, KeyedStreams
from .step import (
    Step,
    num_columns,
    race,
    race_one_shard,
    schedule,
    score_sum,
    score_sums,
    step_affine,
    tile_weights,
    use_triton,
)


def _local_math(on_cpu: bool):
    """The context of the sampler's own arithmetic: on the CPU, torch function modes off.

    A CPU run of Megatron keeps a process-wide mode that maps CUDA device requests to the CPU
    (``sedd_megatron.runtime.cpu``); it costs a Python call on every torch operation, more than
    the operation itself on the sampler's small per-step tensors. The sampler's arithmetic has
    nothing for it to map (every tensor is made on the device of the tensors it comes from), so
    it runs without it; collectives and the model's forward pass keep it."""
    return torch._C.DisableTorchFunction() if on_cpu else contextlib.nullcontext()


class _ScoreCache:
    """The tokens of the last step; per row, the log-score of its last forward pass and the
    log(e^sigma - 1) of that pass (last pipeline stage only)."""

    def __init__(self):
        self.x = None
        self.log_score = None
        self.log_expm1 = None


class Sampler:
    """Draws token sequences from a score model (a ``ScoreModel``) with ``options``."""

    def __init__(self, model, options: SamplingOptions | None = None):
        options = options or SamplingOptions()
        if options.fp32_sampling and model.tp_size > 1:
            raise ConfigError(
                "--fp32-sampling reproduces the reference's draws over the full vocabulary on "
                f"one rank; this model is split over {model.tp_size} tensor-parallel ranks"
            )
        self.model = model
        self.options = options
        self.graph, self.noise = model.graph, model.noise
        self.steps = schedule(
            model.noise, options.steps, options.predictor, options.eps, options.denoise
        )
        self.reuse = options.reuse_for(bool(getattr(model, "time_independent", False)))
        # forward passes, rows they evaluated, and rows whose score was reused instead
        self.stats = {"forward_passes": 0, "rows_evaluated": 0, "rows_reused": 0}

    def sample(
        self,
        conditions: Sequence[Condition] | None,
        sample_ids: Sequence[int],
        seed: int | None,
        callback: Callable | None = None,
        progress: Callable | None = None,
    ) -> torch.Tensor:
        """Tokens (B, L) for samples ``sample_ids`` (one per row; keys of their random streams),
        clamped to ``conditions`` (one per row, or None). ``callback(step, x_in, weights, x_out)``
        sees every draw on the sampling rank (weights: the fp32 mode's only); ``progress()`` is
        called after every draw."""
        device, length = self.model.device, self.model.seq_length
        on_cpu = torch.device(device).type == "cpu"
        batch = len(sample_ids)
        conditions = conditions or [Condition.none()] * batch
        dense = [c.dense(length) for c in conditions]
        project = mask_projector(
            torch.stack([m for m, _ in dense]).to(device),
            torch.stack([v for _, v in dense]).to(device),
        )
        if self.options.fp32_sampling:
            if seed is not None:
                torch.manual_seed(seed)
            x = self.graph.sample_limit(batch, length, device=device)
            draw = self._draw_reference
        else:
            if seed is None:
                raise ValueError("the float64 sampler needs a seed")
            draws = [step.index for step in self.steps]
            with _local_math(on_cpu):
                self.streams = KeyedStreams(seed, sample_ids, length, device, draws)
                x = self._limit(len(sample_ids), length, device)
            draw = self._draw_sharded
        x = self.model.share_tokens(x)
        cache = _ScoreCache() if self.reuse else None
        for step in self.steps:
            with _local_math(on_cpu):
                x = project(x)
                sigma = torch.full((batch,), step.sigma, dtype=torch.float32, device=device)
            if cache is None:
                log_score = self.model.log_score(x, sigma)
                self._count(batch, batch)
            else:
                log_score = self._reused_log_score(cache, x, sigma)
            if self.model.is_last_stage:
                new, weights = draw(step, x, log_score, sample_ids)
                if callback is not None:
                    callback(step, x, weights, new)
            else:
                new = x.clone()  # receives the last stage's tokens
            x = self.model.share_tokens(new)
            if progress is not None:
                progress()
        return project(x)

    def _count(self, evaluated: int, batch: int) -> None:
        self.stats["forward_passes"] += evaluated > 0
        self.stats["rows_evaluated"] += evaluated
        self.stats["rows_reused"] += batch - evaluated

    def _reused_log_score(self, cache: "_ScoreCache", x, sigma):
        """The log-score at (x, sigma): the model's on the rows that changed since their last
        forward pass, the cached one moved to ``sigma`` on the others."""
        batch = x.shape[0]
        if cache.x is None:
            changed = torch.ones(batch, dtype=torch.bool, device=x.device)
        else:
            changed = (x != cache.x).any(dim=-1)
        rows = changed.nonzero().flatten()  # a host sync: the same decision on every rank
        everything = len(rows) == batch
        if everything:
            fresh = self.model.log_score(x, sigma)
        elif len(rows):
            fresh = self.model.log_score(x[rows], sigma[rows])
        else:
            fresh = None
        self._count(len(rows), batch)
        cache.x = x
        if not self.model.is_last_stage:
            return None
        log_expm1 = score_log_expm1(sigma.float())  # float32, as the model's output shift
        if everything:
            cache.log_score, cache.log_expm1 = fresh, log_expm1
            return fresh
        # Cached rows keep the score of their own forward pass (one shift, no drift).
        if fresh is not None:
            cache.log_score[rows] = fresh
            cache.log_expm1[rows] = log_expm1[rows]
        log_score = cache.log_score + (cache.log_expm1 - log_expm1)[:, None, None]
        self._zero_current(log_score, x)
        return log_score

    def _zero_current(self, log_score, x) -> None:
        """Log-score 0 at each position's current token (where it is in this rank's shard)."""
        local = x - self.model.vocab_start
        here = (local >= 0) & (local < self.model.vocab_end - self.model.vocab_start)
        index = local.clamp(0, log_score.shape[-1] - 1)[..., None]
        current = log_score.gather(-1, index)
        log_score.scatter_(-1, index, torch.where(here[..., None], 0.0, current))

    def _limit(self, batch, length, device):
        draws = {}

        def randint(row, high):
            if high not in draws:
                draws[high] = self.streams.randint(LIMIT_STEP, high)
            return draws[high][row]

        return self.graph.limit_draw(batch, length, randint, device=device)

    def _draw_reference(self, step: Step, x, log_score, sample_ids):
        """The reference's float32 weights and draw (global RNG), full vocabulary."""
        score_fn = lambda _x, _sigma: log_score[..., : self.graph.dim]
        t = torch.full((x.shape[0], 1), step.t, dtype=torch.float32, device=x.device)
        if step.kind == "denoise":
            probs = denoiser_probs(self.graph, self.noise, score_fn, x, t)
        else:
            dt = (1 - self.options.eps) / self.options.steps
            probs = PREDICTORS[step.kind](self.graph, self.noise, score_fn, x, t, dt)
        return sample_categorical(probs, torch.float32), probs

    def _draw_sharded(self, step: Step, x, log_score, sample_ids):
        """Exponential race over this rank's columns, then the best over the TP group."""
        graph, model = self.graph, self.model
        start = model.vocab_start
        stop = min(model.vocab_end, num_columns(graph, step))  # columns this rank races over
        real = model.vocab_end - start  # real (unpadded) columns held here
        flat = x.reshape(-1)
        on_cpu = log_score.device.type == "cpu"
        with _local_math(on_cpu):
            active = graph.moving(flat)  # absorb: only masked tokens move, the others stay
            if on_cpu and not active.any():  # nothing to draw (no device sync on the CPU)
                return flat.clone().view_as(x), None
            keys = self.streams.rows(step.index)
            one_pass = model.tp_size == 1 and not use_triton(None, log_score, flat)
            if one_pass:
                best, index = race_one_shard(graph, step, log_score, flat, active, stop, keys)
            else:
                total = score_sums(log_score, real, graph.excluded_column(start), active)
        if not one_pass:
            total = model.all_reduce_sum(total)
            with _local_math(on_cpu):
                affine = step_affine(graph, step, flat, total)
                best, index = race(log_score, start, stop - start, keys, affine, active)
        winner = model.best_over_shards(best, index)
        return torch.where(active, winner, flat).view_as(x), None

    @torch.no_grad()
    def weights(self, x: torch.Tensor, step: Step) -> torch.Tensor | None:
        """The float64 weights (B, L, columns) of ``step`` at tokens x, full vocabulary
        (TP = 1; None on other pipeline stages): what ``_draw_sharded`` races over."""
        if self.model.tp_size > 1:
            raise ValueError("weights() needs the full vocabulary on one rank (TP = 1)")
        sigma = torch.full((x.shape[0],), step.sigma, dtype=torch.float32, device=x.device)
        log_score = self.model.log_score(x, sigma)
        if log_score is None:
            return None
        log_score = log_score[..., : self.graph.dim].reshape(-1, self.graph.dim)
        flat = x.reshape(-1)
        total = score_sum(self.graph, log_score, 0)
        cols = num_columns(self.graph, step)
        w = tile_weights(self.graph, step, log_score[:, :cols], flat, 0, total)
        return w.view(*x.shape, cols)
