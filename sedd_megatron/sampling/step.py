"""The sampler's transition weights on a slice of the vocabulary (a tensor-parallel shard).

``sedd_megatron.diffusion.sampling`` defines the weights on the full vocabulary. They only need
the vocabulary through one per-token sum, so a shard computes its columns from its own scores
plus that all-reduced (B, L) sum. With s = exp(log-score) (s_x = 1 at the current token x):

* absorb, x = MASK, coefficient c (Euler: dt sigma_bar'(t); analytic: e^dsigma - 1; denoiser:
  e^sigma_bar(eps) - 1): w_y = c s_y for y != MASK, w_MASK = 1 - c S, S = sum_{y != MASK} s_y
  (the denoiser drops the MASK column). x != MASK: w = onehot(x) (the token stays).
* uniform, Euler: w_y = (c / N) s_y for y != x, w_x = 1 - (c / N)(T - 1), T = sum_y s_y.
* uniform, analytic with exponent d (dsigma, or sigma_bar(eps) for the denoiser):
  w_y = (e^d s_y - (e^d - 1) T / N) ((1 - e^-d) / N + e^-d [y = x]).

Weights are float64 (from the float32 scores); coefficients are computed in float64 from the
float32 time grid (the model sees the reference's float32 sigma), except the absorbing graph's
e^dsigma - 1, which ``Graph.sampler_weights`` has always evaluated in float32.

The sampler's step (:func:`score_sums`, then :func:`race`) never builds the weights of a whole
shard: the graph gives them per token row in affine form (``Graph.sampler_affine``), and one
pass over the shard's log-scores computes s, w, the keyed uniform u (``rng``), E = -log(u) and
the running best of w / E. On CUDA (and on CPU tensors under Triton's interpreter when asked,
see ``sedd_megatron.kernels.dispatch``) the Triton kernels of
``sedd_megatron.kernels.sampling_step`` do it, one program per token row, rows that do not move
skipped inside the kernel (no host synchronisation); elsewhere the torch code below does the same
arithmetic in blocks of whole rows, on the CPU over the moving rows only.
"""

import os
from dataclasses import dataclass

import torch

from sedd_megatron.diffusion import Graph, Noise, time_grid
from sedd_megatron.diffusion.graph import SamplerAffine

from .rng import bits_to_uniform_, element_bits, range_strides

KINDS = ("euler", "analytic", "denoise")
# float64 elements per block of the torch step: cache-sized on CPU, large on GPUs
CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}


@dataclass(frozen=True)
class Step:
    """One draw of the sampler. ``index`` 0..steps-1 for predictor steps, ``steps`` for the
    denoiser; ``t`` the float32 time (as the reference); ``sigma`` the float32 total noise fed
    to the model; ``kind`` in KINDS; ``coef`` (Euler: dt sigma_bar'(t)) or ``exponent``
    (analytic: dsigma; denoiser: sigma_bar(eps)), float64."""

    index: int
    t: float
    sigma: float
    kind: str
    coef: float = 0.0
    exponent: float = 0.0


def schedule(
    noise: Noise, steps: int, predictor: str, eps: float = 1e-5, denoise: bool = True
) -> list[Step]:
    """The draws of a run: ``steps`` predictor steps (none for predictor "none", which leaves
    the tokens alone) then the denoiser."""
    if predictor not in ("euler", "analytic", "none"):
        raise ValueError(f"unknown predictor {predictor!r} (expected analytic, euler or none)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = time_grid(steps, eps, dtype=torch.float32)
    dt = (1 - eps) / steps
    out = []
    for i in range(steps if predictor != "none" else 0):
        t32 = grid[i]
        t = t32.double()
        sigma = float(noise(t32)[0])
        if predictor == "euler":
            out.append(Step(i, float(t32), sigma, "euler", coef=dt * float(noise(t)[1])))
        else:
            dsigma = float(noise(t)[0] - noise(t - dt)[0])
            out.append(Step(i, float(t32), sigma, "analytic", exponent=dsigma))
    if denoise:
        t32 = grid[-1]
        sigma = float(noise(t32)[0])
        exponent = float(noise(t32.double())[0])
        out.append(Step(steps, float(t32), sigma, "denoise", exponent=exponent))
    return out


def num_columns(graph: Graph, step: Step) -> int:
    """Columns a draw chooses from: the vocabulary, less MASK for the absorb denoiser (which
    draws data tokens only)."""
    return graph.num_tokens if step.kind == "denoise" else graph.dim


def score_sum(graph: Graph, log_score: torch.Tensor, start: int) -> torch.Tensor:
    """Partial S (absorb: MASK excluded) or T (uniform) over columns [start, start + C) of the
    float32 log-scores (R, C), all real vocabulary columns; float64 (R,)."""
    s = log_score.double().exp()
    mask_col = graph.excluded_column(start)
    if mask_col is not None and 0 <= mask_col < s.shape[-1]:
        s[:, mask_col] = 0.0
    return s.sum(-1)


def tile_weights(
    graph: Graph, step: Step, log_score: torch.Tensor, x: torch.Tensor, start: int, total
) -> torch.Tensor:
    """Weights (R, C) float64 of columns [start, start + C) for R tokens with current ids x (R,),
    float32 log-scores (R, C) and the full-vocabulary sums ``total`` (R,) of :func:`score_sum`."""
    s = log_score.double().exp()
    total = total.double()
    return graph.sampler_weights(
        s, x, start, total, step.kind, coef=step.coef, exponent=step.exponent
    )


def step_affine(graph: Graph, step: Step, x: torch.Tensor, total: torch.Tensor) -> SamplerAffine:
    """The weights of ``step`` for tokens x (R,) with full-vocabulary sums ``total`` (R,)."""
    return graph.sampler_affine(x, total, step.kind, coef=step.coef, exponent=step.exponent)


def pack_affine(affine: SamplerAffine) -> tuple[torch.Tensor, torch.Tensor]:
    """(coefficients (R, 6) float64: scale, shift, gain, special scale, shift, gain; special
    columns (R,) int64), the layout the kernels read."""
    floats = (affine.scale, affine.shift, affine.gain)
    floats += (affine.special_scale, affine.special_shift, affine.special_gain)
    coefficients = torch.stack([f.to(torch.float64) for f in floats], dim=-1)
    return coefficients, affine.special.to(torch.int64)


def use_triton(fused: bool | None, *tensors: torch.Tensor) -> bool:
    """Whether to run the Triton kernels: ``fused`` True / False forces it, None picks them when
    they can run (triton is imported only when that can be true)."""
    if fused is False:
        return False
    if fused is None and not any(t.is_cuda for t in tensors):
        if os.environ.get("SEDD_TRITON_ON_CPU") != "1":
            return False  # the CPU keeps the torch code unless the tests ask for the kernels
    from sedd_megatron.kernels.dispatch import triton_usable  # lazy: imports triton

    usable = triton_usable(*tensors)
    if fused and not usable:
        raise RuntimeError("the fused sampling step needs triton and CUDA tensors")
    return usable


def _row_blocks(active: torch.Tensor, columns: int):
    """Blocks of token rows for the torch step: on the CPU the moving rows only (finding them
    costs no device synchronisation there), elsewhere every row (the caller masks)."""
    if active.device.type == "cpu":
        rows = active.nonzero().squeeze(-1)
    else:
        rows = torch.arange(active.shape[0], device=active.device)
    budget = CHUNK_ELEMENTS.get(active.device.type, 1 << 20)
    per_block = max(1, budget // max(columns, 1))
    return [rows[k : k + per_block] for k in range(0, rows.shape[0], per_block)]


def _sum_excluding(s: torch.Tensor, excluded: int | None) -> torch.Tensor:
    """Row sums of s (n, C) without column ``excluded`` (s is left as it was)."""
    if excluded is None or not 0 <= excluded < s.shape[-1]:
        return s.sum(-1)
    kept = s[:, excluded].clone()
    s[:, excluded] = 0.0
    total = s.sum(-1)
    s[:, excluded] = kept
    return total


def score_sums(
    scores: torch.Tensor,
    num_valid: int,
    excluded: int | None,
    active: torch.Tensor,
    fused: bool | None = None,
) -> torch.Tensor:
    """Partial S (absorb) / T (uniform) of every token row of this shard's log-scores
    (B, L, V): the sum of e^{s_y} over the shard's real columns y < ``num_valid`` except the
    shard-local column ``excluded`` (``graph.excluded_column(start)``); float64 (B * L,), 0 for
    rows that do not move (``active`` (B * L,) False). Sum over shards for the full sums."""
    if use_triton(fused, scores, active):
        from sedd_megatron.kernels.sampling_step import score_sums_triton  # lazy: triton

        return score_sums_triton(scores, num_valid, excluded, active)
    out = torch.zeros(active.shape[0], dtype=torch.float64, device=scores.device)
    num_valid = max(0, min(int(num_valid), scores.shape[-1]))
    if num_valid == 0:
        return out
    blocks = _row_blocks(active, num_valid)
    if blocks:
        buffer = torch.empty(blocks[0].shape[0], num_valid, dtype=torch.float64, device=out.device)
        for rows in blocks:
            s = _exp_scores(scores, rows, num_valid, buffer[: rows.shape[0]])
            out[rows] = _sum_excluding(s, excluded)
    return torch.where(active, out, 0.0)


def race(
    scores: torch.Tensor,
    start: int,
    num_cols: int,
    row_keys: torch.Tensor,
    affine: SamplerAffine,
    active: torch.Tensor,
    fused: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exponential race of every moving token row over this shard's columns [0, num_cols)
    (global columns start + c) of log-scores (B, L, V): (best w / E float64 (B * L,), its global
    column int64 (B * L,)), with w from ``affine`` (the rows' ``SamplerAffine``), u from the row
    keys (``rng``) and E = -log(u); -inf / -1 for rows that do not move or when the shard has no
    columns to race over. Ties go to the lowest column; over shards, the largest value wins. A
    NaN value wins as in ``torch.argmax`` (above every number; the first NaN column, value
    NaN), on both paths and over shards."""
    coefficients, special = pack_affine(affine)
    if use_triton(fused, scores, row_keys, coefficients, active):
        from sedd_megatron.kernels.sampling_step import race_triton  # lazy: triton

        return race_triton(scores, start, num_cols, row_keys, coefficients, special, active)
    num_cols = max(0, min(int(num_cols), scores.shape[-1]))

    def block(rows, s):
        return coefficients[rows], special[rows]

    return _race_torch(scores, start, num_cols, num_cols, row_keys, active, block)


def race_one_shard(
    graph: Graph,
    step: Step,
    scores: torch.Tensor,
    x: torch.Tensor,
    active: torch.Tensor,
    num_cols: int,
    row_keys: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`score_sums` and :func:`race` in one pass, in torch, when this rank holds the whole
    vocabulary (scores (B, L, V'), no all-reduce between the two): each block of rows takes e^s
    once for both. The same numbers as the two calls."""
    num_valid = graph.dim
    excluded = graph.excluded_column(0)
    num_cols = max(0, min(int(num_cols), num_valid))

    def block(rows, s):
        total = _sum_excluding(s, excluded)
        return pack_affine(step_affine(graph, step, x[rows], total))

    return _race_torch(scores, 0, num_cols, num_valid, row_keys, active, block)


def _race_torch(scores, start, num_cols, width, row_keys, active, block_affine):
    """The torch race over shard columns [0, num_cols) in blocks of rows, reading ``width`` >=
    num_cols columns of scores; ``block_affine(rows, s)`` gives the packed affine of a block
    (its scores s = e^{log-score}, (n, width), may be read). Buffers are allocated once per call
    and every step works in place on them."""
    device = scores.device
    rows_total = active.shape[0]
    best = torch.full((rows_total,), float("-inf"), dtype=torch.float64, device=device)
    index = torch.full((rows_total,), -1, dtype=torch.int64, device=device)
    if num_cols == 0:
        return best, index
    blocks = _row_blocks(active, width)
    if not blocks:
        return best, index
    strides = range_strides(start, start + num_cols, device)
    n_max = blocks[0].shape[0]
    s_buf = torch.empty(n_max, width, dtype=torch.float64, device=device)
    bits_buf = torch.empty(n_max, num_cols, dtype=torch.int64, device=device)
    tmp_buf = torch.empty_like(bits_buf)
    for rows in blocks:
        n = rows.shape[0]
        s = _exp_scores(scores, rows, width, s_buf[:n])
        coefficients, special = block_affine(rows, s)
        value = race_block(
            s[:, :num_cols],
            coefficients,
            special - start,
            row_keys[rows],
            strides,
            bits_buf[:n],
            tmp_buf[:n],
        )
        # the first of equal values (the lowest column); a NaN counts above every number, the
        # first NaN wins: the kernel's order (kernels/sampling_step.py)
        arg = value.argmax(-1)
        best[rows] = value.gather(-1, arg[:, None]).squeeze(-1)
        index[rows] = arg + start
    if device.type == "cpu":  # the blocks held the moving rows only: the others are untouched
        return best, index
    best = torch.where(active, best, float("-inf"))
    return best, torch.where(active, index, -1)


def _exp_scores(scores, rows, width, out):
    """e^{log-score} of token rows ``rows`` of (B, L, V), columns [0, width), into ``out``."""
    length = scores.shape[1]
    if scores.stride(0) == length * scores.stride(1):  # rows of a (B * L, V) view
        block = scores.view(-1, scores.shape[-1]).index_select(0, rows)[:, :width]
    else:
        block = scores[rows // length, rows % length, :width]
    return out.copy_(block).exp_()


def race_block(
    s: torch.Tensor,
    coefficients: torch.Tensor,
    special: torch.Tensor,
    keys: torch.Tensor,
    strides: torch.Tensor,
    bits: torch.Tensor | None = None,
    tmp: torch.Tensor | None = None,
) -> torch.Tensor:
    """w / E of a block of n rows and C columns, in place: scores s = e^{log-score} float64
    (n, C) (becomes the result), coefficients (n, 6) and block-local special columns (n,) of
    ``pack_affine``, row keys (n,) and column strides (C,) of ``rng``; ``bits`` and ``tmp``:
    optional contiguous int64 (n, C) scratch. The Triton kernel's arithmetic, step by step (the
    sign of E = -log(u) moves onto the gains: -x / y == x / -y exactly)."""
    scale, shift, gain, special_scale, special_shift, special_gain = coefficients.unbind(-1)
    inside = (special >= 0) & (special < s.shape[-1])
    at = special.clamp(0, s.shape[-1] - 1)[:, None]
    s_special = s.gather(-1, at).squeeze(-1)
    w_special = (special_scale * s_special + special_shift) * -special_gain
    w = s.mul_(scale[:, None]).add_(shift[:, None]).mul_(-gain[:, None])
    w.scatter_(-1, at, torch.where(inside, w_special, w.gather(-1, at).squeeze(-1))[:, None])
    if bits is None:
        bits, tmp = torch.empty(s.shape, dtype=torch.int64, device=s.device), None
    if tmp is None:
        tmp = torch.empty_like(bits)
    u = bits_to_uniform_(element_bits(keys, strides, bits, tmp), tmp)
    return w.div_(u.log_())
