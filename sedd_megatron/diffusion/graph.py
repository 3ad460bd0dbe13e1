"""Diffusion graphs: the rate matrix Q of the forward CTMC (docs/math.md §1, §3).

Convention: dp_t/dt = sigma(t) Q p_t, Q(y, x) = rate of jumping x -> y, so columns of Q sum to
zero and p_{t|0}(y | x) = exp(sigma_bar Q)(y, x). ``rate(i)`` is column i, ``transp_rate(i)``
row i; ``transition(i, s)`` is column i of exp(s Q) (the law of x_t given x_0 = i) and
``transp_transition(i, s)`` row i (y -> p(x_t = i | x_0 = y)). Vocabulary functions return
(..., dim) for token ids i of shape (...); sigma is (B,), (B, 1) or per token, broadcast
against i.

Score entropy (the DWDSE integrand, Eq. 9 of the paper) at a token x_t = x with clean token x0,
log-score s = log s_theta(x_t, sigma)_{., y}, weights w_y = Q(x, y) and ratios
r_y = p(y | x0) / p(x | x0):

    SE = sum_{y != x} w_y (e^{s_y} - r_y s_y + K(r_y)),   K(a) = a (log a - 1).

It is split for vocabulary-parallel use (the vocabulary is sharded across tensor-parallel ranks):

1. ``score_entropy_stats(log_score, x_t, x0, vocab_offset)``: sums over the (local) vocabulary
   only. Called on a shard holding columns [vocab_offset, vocab_offset + V_local), it returns
   partial sums; summing the fields over shards (one all-reduce) gives the full statistics.
2. ``score_entropy_from_stats(stats, sigma, x_t, x0)``: per-token coefficients of sigma
   (float64) and the final combination, on (B, L) tensors. ``score_entropy`` is exactly 1 then 2.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .categorical import Generator, randint, sample_categorical, uniform


class ScoreEntropyStats(NamedTuple):
    """Vocabulary reductions for score entropy, each (B, L); they add up across vocabulary shards.

    exp_sum: sum of e^{s_y} over y != MASK (absorb) or y != x_t (uniform).
    at_x0:   s_{x0} (0 on shards that do not hold column x0).
    log_sum: sum of s_y over y != x_t (uniform only; None for absorb).
    """

    exp_sum: torch.Tensor
    at_x0: torch.Tensor
    log_sum: torch.Tensor | None = None

    def map(self, fn) -> "ScoreEntropyStats":
        """Apply ``fn`` to every present field (e.g. an all-reduce)."""
        return ScoreEntropyStats(*(None if v is None else fn(v) for v in self))

    @staticmethod
    def sum(shards) -> "ScoreEntropyStats":
        """Combine the statistics of all vocabulary shards (what an all-reduce SUM computes)."""
        shards = list(shards)
        return ScoreEntropyStats(
            *(None if v[0] is None else torch.stack(v).sum(0) for v in zip(*shards, strict=True))
        )


def _bcast(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma as a tensor broadcastable against x: (B,) -> (B, 1, ...)."""
    sigma = torch.as_tensor(sigma, device=x.device)
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def _float(sigma: torch.Tensor) -> torch.dtype:
    return sigma.dtype if sigma.is_floating_point() else torch.get_default_dtype()


def log_expm1(sigma: torch.Tensor) -> torch.Tensor:
    """log(e^sigma - 1) = sigma + log(1 - e^-sigma), finite for every sigma > 0."""
    return sigma + torch.log(-torch.expm1(-sigma))


def _stats_dtype(log_score: torch.Tensor) -> torch.dtype:
    return torch.promote_types(log_score.dtype, torch.float32)


def _gather_shard(values: torch.Tensor, index: torch.Tensor, offset: int):
    """(values[..., index - offset], whether the shard holds that column); 0 where it does not."""
    local = index - offset
    inside = (local >= 0) & (local < values.shape[-1])
    picked = values.gather(-1, local.clamp(0, values.shape[-1] - 1)[..., None]).squeeze(-1)
    return torch.where(inside, picked, torch.zeros_like(picked)), inside, local


def _column_weights(s: torch.Tensor, num_valid: int | None, drop: int | None = None):
    """A (V_local,) vector of 1s over the columns to sum and 0s elsewhere (padding, ``drop``).

    Sums over the vocabulary are taken as ``values @ weights``: one pass, no sliced copies, and
    a cheap backward (each slice of a (B, L, V) tensor costs a zero-filled copy there).
    """
    weights = torch.ones(s.shape[-1], dtype=s.dtype, device=s.device)
    if num_valid is not None:
        weights[num_valid:] = 0
    if drop is not None and 0 <= drop < s.shape[-1]:
        weights[drop] = 0
    return weights


def _at_column(w: torch.Tensor, x: torch.Tensor, start: int):
    """(rows whose token x is in this slice, its local column) for scatter updates."""
    local = x - start
    inside = (local >= 0) & (local < w.shape[-1])
    return inside.nonzero().squeeze(-1), local[inside]


class SamplerAffine(NamedTuple):
    """The weights of one reverse draw as an affine function of the scores, per token row r
    (every field an (R,) tensor: float64, ``special`` int64):

        w_y = (scale_r s_y + shift_r) gain_r                              y != special_r
        w_y = (special_scale_r s_y + special_shift_r) special_gain_r      y == special_r

    with s = exp(log-score) and ``special_r`` a global column (-1: none). Evaluated in this
    order it gives ``sampler_weights`` bit for bit; the fused sampler step evaluates it column
    by column without materialising the weights.
    """

    scale: torch.Tensor
    shift: torch.Tensor
    gain: torch.Tensor
    special: torch.Tensor
    special_scale: torch.Tensor
    special_shift: torch.Tensor
    special_gain: torch.Tensor


class Graph(ABC):
    """The forward process of one graph. Everything that differs between graphs is a method or
    class attribute here (abstract in this base), so that code outside ``sedd_megatron.diffusion``
    never asks which graph it holds. Subclasses register under ``name`` in :data:`GRAPHS`.

    Class attributes: ``name`` (the registry key), ``default_noise`` (the noise schedule used
    with the graph unless one is given), ``sigma_scaling`` (the model's ``scale_by_sigma``
    output shift is defined for the graph, and on by default), ``clean_loss_is_zero`` (the score
    entropy of an uncorrupted sequence, x_t = x0, is exactly 0), ``absorb`` (kept for tests;
    outside this package use the methods instead).
    """

    name: str
    default_noise: str
    sigma_scaling: bool
    clean_loss_is_zero: bool
    absorb: bool

    def __init__(self, num_tokens: int):
        self.num_tokens = num_tokens

    @property
    @abstractmethod
    def dim(self) -> int:
        """States of the chain: rows of the model's embedding and output layer (V')."""

    @property
    @abstractmethod
    def mask_id(self) -> int | None:
        """The id of the MASK state, or None if the graph has none."""

    @abstractmethod
    def rate(self, i, dtype=None):
        """Column i of Q: rates of jumping out of x = i, (..., dim)."""

    @abstractmethod
    def transp_rate(self, i, dtype=None):
        """Row i of Q: rates of jumping into x = i, (..., dim)."""

    @abstractmethod
    def transition(self, i, sigma):
        """Column i of exp(sigma Q): the law of x_t given x_0 = i, (..., dim)."""

    @abstractmethod
    def transp_transition(self, i, sigma):
        """Row i of exp(sigma Q): y -> p(x_t = i | x_0 = y), (..., dim)."""

    @abstractmethod
    def sample_transition(self, x0, sigma, generator: Generator = None):
        """x_t ~ p_{t|0}(. | x0) at total noise sigma, i.i.d. over positions."""

    @abstractmethod
    def staggered_score(self, score, dsigma):
        """exp(-dsigma Q) s along the last dimension."""

    @abstractmethod
    def sample_limit(self, *batch_dims, device=None, generator: Generator = None):
        """Tokens of shape ``batch_dims`` from the limiting distribution (t = 1)."""

    @abstractmethod
    def limit_draw(self, rows: int, length: int, randint: Callable, device=None):
        """The t = 1 state of ``rows`` sequences of ``length`` tokens, whatever randomness it
        needs coming from ``randint(row, high)``: a (length,) tensor of ids in [0, high) for row
        ``row`` (e.g. the sampler's keyed streams). Not called where no draw is needed."""

    @abstractmethod
    def corrupt(self, x0: torch.Tensor, where: torch.Tensor, generator: Generator = None):
        """x0 with the positions ``where`` (bool, x0's shape) moved to a draw of the limiting
        distribution: the state of x0 with exactly those positions corrupted."""

    @abstractmethod
    def moving(self, x: torch.Tensor) -> torch.Tensor:
        """Bool, x's shape: the positions of x that a reverse step can still change."""

    @abstractmethod
    def excluded_column(self, offset: int = 0) -> int | None:
        """The column that vocabulary sums of the scores leave out for every token (score
        entropy's exp_sum, the sampler's S), relative to a shard starting at ``offset`` (it may
        fall outside the shard); None if there is none."""

    @abstractmethod
    def sampler_weights(self, s, x, start: int, total, kind: str, coef=0.0, exponent=0.0):
        """Float64 weights (R, C) of one reverse draw over columns [start, start + C), for R
        tokens with ids x (R,), scores s = exp(log-score) (R, C) float64 and the full-vocabulary
        sums ``total`` (R,) float64 (see ``sedd_megatron.sampling.step``). ``kind`` is
        "euler" (coefficient ``coef``), "analytic" or "denoise" (exponent ``exponent``)."""

    @abstractmethod
    def sampler_affine(self, x, total, kind: str, coef=0.0, exponent=0.0) -> SamplerAffine:
        """``sampler_weights`` of tokens x (R,) with sums ``total`` (R,) float64 in the affine
        form of :class:`SamplerAffine` (the same values, bit for bit, on any columns)."""

    @abstractmethod
    def log_integrand_scale(self, sigma, dsigma, k, length: int):
        """log omega(t, k): the size, up to a constant, of the ELBO integrand
        sum_l sigma_bar'(t) SE_l of a sequence of ``length`` tokens with ``k`` of them corrupted,
        at total noise ``sigma`` and rate ``dsigma`` = sigma_bar'(t) (the importance design's
        proposal; see ``sedd_megatron.evaluation.designs``)."""

    @abstractmethod
    def prior_kl(self, sigma) -> torch.Tensor:
        """KL(p_{sigma|0}(. | x0) || p_base) of one position at total noise ``sigma``, float64 of
        sigma's shape: the prior term of the ELBO at sigma = sigma_bar(1).

        p_base(x) = (1/N) sum_{x0 < N} p_{sigma|0}(x | x0) is the marginal at ``sigma`` of the
        forward process started from a uniformly random data token (docs/math.md §6.5). By the
        symmetry of the graph the KL is the same for every data token x0. (The sampler starts
        from ``sample_limit``; for the absorbing graph that is a delta at MASK, against which
        the KL is infinite, as p_{sigma|0} keeps mass e^{-sigma} on x0.)"""

    @abstractmethod
    def score_entropy_stats(self, log_score, x_t, x0, vocab_offset: int = 0, num_valid=None):
        """The vocabulary reductions (:class:`ScoreEntropyStats`) over the columns held here."""

    @abstractmethod
    def score_entropy_from_stats(self, stats, sigma, x_t, x0):
        """Per-token score entropy (B, L) from the full-vocabulary statistics."""

    def onehot(self, i, dtype=torch.float32):
        """One-hot rows (..., dim) of token ids i."""
        return F.one_hot(i, self.dim).to(dtype)

    def reverse_rate(self, i: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Reverse rates out of x = i: R(y) = Q(i, y) s_y for y != i, R(i) = -sum_{y != i} R(y)."""
        rate = self.transp_rate(i, dtype=score.dtype) * score
        rate = rate.scatter(-1, i[..., None], 0.0)
        return rate.scatter(-1, i[..., None], -rate.sum(-1, keepdim=True))

    def sample_rate(self, i, rate, dtype=torch.float64, generator: Generator = None):
        """One Euler step of the reverse CTMC: x ~ Cat(onehot(i) + rate)."""
        return sample_categorical(self.onehot(i, rate.dtype) + rate, dtype, generator)

    def score_entropy(self, log_score, sigma, x_t, x0) -> torch.Tensor:
        """Per-token score entropy (B, L) from the full-vocabulary log-score (B, L, dim)."""
        stats = self.score_entropy_stats(log_score, x_t, x0)
        return self.score_entropy_from_stats(stats, sigma, x_t, x0)

    def __repr__(self):
        return f"{type(self).__name__}(num_tokens={self.num_tokens})"


class Absorbing(Graph):
    """Every token jumps to MASK = num_tokens at rate 1: Q = e_M 1^T - I on the token columns.

    p_{t|0}: stay with e^{-sigma}, masked with 1 - e^{-sigma}; MASK is absorbing.
    Score entropy (masked x_t only, 0 elsewhere), r = 1 / (e^sigma - 1):
        SE = sum_{y != M} e^{s_y} - r s_{x0} + r (log r - 1).
    """

    name = "absorb"
    default_noise = "loglinear"
    sigma_scaling = True
    clean_loss_is_zero = True  # SE vanishes off the MASK
    absorb = True

    @property
    def dim(self) -> int:
        return self.num_tokens + 1

    @property
    def mask_id(self) -> int:
        return self.num_tokens

    def rate(self, i, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        return self.onehot(torch.full_like(i, self.mask_id), dtype) - self.onehot(i, dtype)

    def transp_rate(self, i, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        return (i == self.mask_id)[..., None].to(dtype) - self.onehot(i, dtype)

    def transition(self, i, sigma):
        sigma = _bcast(sigma, i)[..., None]
        dtype = _float(sigma)
        stay = torch.exp(-sigma).to(dtype)
        masked = self.onehot(torch.full_like(i, self.mask_id), dtype)
        return stay * self.onehot(i, dtype) - torch.expm1(-sigma).to(dtype) * masked

    def transp_transition(self, i, sigma):
        sigma = _bcast(sigma, i)[..., None]
        dtype = _float(sigma)
        stay = torch.exp(-sigma).to(dtype)
        leak = -torch.expm1(-sigma).to(dtype) * (i == self.mask_id)[..., None].to(dtype)
        return stay * self.onehot(i, dtype) + leak

    def sample_transition(self, x0, sigma, generator: Generator = None):
        """Mask each token independently with probability 1 - e^{-sigma}."""
        move = -torch.expm1(-_bcast(sigma, x0))
        u = uniform(x0.shape, dtype=move.dtype, device=x0.device, generator=generator)
        return torch.where(u < move, torch.full_like(x0, self.mask_id), x0)

    def staggered_score(self, score, dsigma):
        """e^{dsigma} s, plus (1 - e^{dsigma}) sum_z s_z on the MASK entry."""
        dsigma = _bcast(dsigma, score[..., 0]).to(score.dtype)
        out = score * dsigma.exp()[..., None]
        out[..., self.mask_id] += -torch.expm1(dsigma) * score.sum(-1)
        return out

    def sample_limit(self, *batch_dims, device=None, generator: Generator = None):
        return torch.full(batch_dims, self.mask_id, dtype=torch.long, device=device)

    def limit_draw(self, rows: int, length: int, randint: Callable, device=None):
        """All MASK; ``randint`` is not called."""
        return self.sample_limit(rows, length, device=device)

    def corrupt(self, x0, where, generator: Generator = None):
        """MASK at ``where`` (no random draw)."""
        return torch.where(where, torch.full_like(x0, self.mask_id), x0)

    def moving(self, x):
        """The masked positions: the others stay with probability 1."""
        return x == self.mask_id

    def excluded_column(self, offset: int = 0) -> int:
        """The MASK column."""
        return self.mask_id - offset

    def sampler_weights(self, s, x, start: int, total, kind: str, coef=0.0, exponent=0.0):
        """At x = MASK, with c = coef (Euler) or e^exponent - 1: w_y = c s_y for y != MASK,
        w_MASK = 1 - c total (the denoiser has no MASK column); at x != MASK, w = onehot(x)."""
        c = self._coefficient(kind, coef, exponent)
        w = c * s
        mask_col = self.mask_id - start
        if kind != "denoise" and 0 <= mask_col < w.shape[-1]:
            w[:, mask_col] = 1 - c * total
        stay = x != self.mask_id
        w[stay] = 0.0
        rows, cols = _at_column(w, torch.where(stay, x, -1), start)
        w[rows, cols] = 1.0
        return w

    @staticmethod
    def _coefficient(kind: str, coef: float, exponent: float):
        """c of ``sampler_weights``: ``coef`` (Euler) or e^exponent - 1 (computed in float32,
        as the sampler always has: tests/sampling's tolerances against the reference's float32
        coefficients assume it)."""
        if kind == "euler":
            return coef
        return torch.expm1(torch.tensor(exponent))

    def sampler_affine(self, x, total, kind: str, coef=0.0, exponent=0.0) -> SamplerAffine:
        """At x = MASK: scale c, special column MASK (none for the denoiser) with the constant
        1 - c total. At x != MASK: scale 0, special column x with the constant 1 (one-hot)."""
        c = float(self._coefficient(kind, coef, exponent))
        masked = x == self.mask_id
        zero = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        one = torch.ones_like(zero)
        special = torch.where(masked, self.mask_id if kind != "denoise" else -1, x)
        return SamplerAffine(
            scale=torch.where(masked, c, zero),
            shift=zero,
            gain=one,
            special=special,
            special_scale=zero,
            special_shift=torch.where(masked, 1 - c * total.double(), one),
            special_gain=one,
        )

    def log_integrand_scale(self, sigma, dsigma, k, length: int):
        """log(k sigma' / (e^sigma - 1)) = log(k d/dt log q(t)), q(t) = 1 - e^{-sigma}: the
        integrand of a predictor with a constant per-token cross-entropy."""
        return torch.log(k) + torch.log(dsigma) - log_expm1(sigma)

    def prior_kl(self, sigma) -> torch.Tensor:
        """e^{-sigma} log N: p_base is MASK with probability 1 - e^{-sigma} and each data token
        with probability e^{-sigma} / N ("MASK with leakage"); p_{sigma|0} differs from it only
        on x0 (e^{-sigma} against e^{-sigma} / N)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return torch.exp(-sigma) * math.log(self.num_tokens)

    def score_entropy_stats(self, log_score, x_t, x0, vocab_offset: int = 0, num_valid=None):
        """exp_sum = sum_{y != M} e^{s_y} and at_x0 = s_{x0} over columns held by this shard.

        Columns from ``num_valid`` on (vocabulary padding) are ignored; they must be finite.
        """
        s = log_score.to(_stats_dtype(log_score))
        weights = _column_weights(s, num_valid, drop=self.mask_id - vocab_offset)
        exp_sum = s.exp() @ weights
        at_x0, _, _ = _gather_shard(s, x0, vocab_offset)
        return ScoreEntropyStats(exp_sum, at_x0)

    def score_entropy_from_stats(self, stats, sigma, x_t, x0):
        """SE = exp_sum - r at_x0 + r (log r - 1) on masked tokens; r = 1/(e^sigma - 1), float64."""
        log_em1 = log_expm1(_bcast(sigma, x_t).double())
        r = torch.exp(-log_em1)
        const = -r * (log_em1 + 1)
        se = stats.exp_sum.double() - r * stats.at_x0.double() + const
        se = torch.where(x_t == self.mask_id, se, torch.zeros_like(se))
        return se.to(stats.exp_sum.dtype)


class Uniform(Graph):
    """Jump to a uniformly drawn token at rate 1 ("normalised down by dimension"): Q = 11^T/N - I.

    p_{t|0}(y|x0) = (1 - e^{-sigma})/N + e^{-sigma} [y = x0]. With w_y = 1/N, a = N/(e^sigma - 1)
    and rho = (e^sigma - 1)/(e^sigma - 1 + N) = 1/(1 + a):
        x_t == x0: SE = (1/N) sum_{y != x} e^{s_y} - (rho/N) sum_{y != x} s_y
                        + (N - 1)/N rho (log rho - 1)
        x_t != x0: SE = (1/N) sum_{y != x} e^{s_y} - (a/N) s_{x0} - (1/N) sum_{y != x} s_y
                        + [(1 + a)(log(1 + a) - 1) - (N - 2)] / N
    rho, log rho = -log1p(a) and 1/rho = 1 + a never cancel (the reference's 1 - N/(e^sigma - 1 + N)
    does, and is NaN at small sigma in float32).
    """

    name = "uniform"
    default_noise = "geometric"
    sigma_scaling = False
    clean_loss_is_zero = False
    absorb = False

    @property
    def dim(self) -> int:
        return self.num_tokens

    @property
    def mask_id(self) -> None:
        return None

    def rate(self, i, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        return 1.0 / self.dim - self.onehot(i, dtype)

    transp_rate = rate  # Q is symmetric

    def transition(self, i, sigma):
        sigma = _bcast(sigma, i)[..., None]
        dtype = _float(sigma)
        jump = (-torch.expm1(-sigma) / self.dim).to(dtype)
        return jump + torch.exp(-sigma).to(dtype) * self.onehot(i, dtype)

    transp_transition = transition

    def sample_transition(self, x0, sigma, generator: Generator = None):
        """With probability 1 - e^{-sigma} replace the token by a uniform draw (maybe itself)."""
        move = -torch.expm1(-_bcast(sigma, x0))
        u = uniform(x0.shape, dtype=move.dtype, device=x0.device, generator=generator)
        new = randint(self.dim, x0.shape, device=x0.device, generator=generator)
        return torch.where(u < move, new, x0)

    def staggered_score(self, score, dsigma):
        """e^{dsigma} s + (1 - e^{dsigma})/N sum_z s_z."""
        dsigma = _bcast(dsigma, score[..., 0]).to(score.dtype)
        extra = -torch.expm1(dsigma) / self.dim * score.sum(-1)
        return score * dsigma.exp()[..., None] + extra[..., None]

    def sample_limit(self, *batch_dims, device=None, generator: Generator = None):
        return randint(self.dim, batch_dims, device=device, generator=generator)

    def limit_draw(self, rows: int, length: int, randint: Callable, device=None):
        """Uniform tokens: ``randint(row, dim)`` for each row."""
        return torch.stack([randint(row, self.dim) for row in range(rows)]).to(device)

    def corrupt(self, x0, where, generator: Generator = None):
        """A uniform redraw (maybe the same token) at ``where``; draws ``torch.randint`` over
        all of x0's shape from ``generator``."""
        new = torch.randint(0, self.dim, x0.shape, generator=generator)
        return torch.where(where, new, x0)

    def moving(self, x):
        """Every position."""
        return torch.ones_like(x, dtype=torch.bool)

    def excluded_column(self, offset: int = 0) -> None:
        """None: the sampler's sum T covers every column, and the score entropy leaves out each
        token's own column x_t instead of a fixed one."""
        return None

    def sampler_weights(self, s, x, start: int, total, kind: str, coef=0.0, exponent=0.0):
        """Euler: w_y = (c / N) s_y for y != x, w_x = 1 - (c / N)(total - 1), c = coef.
        Analytic / denoiser, d = exponent: w_y = (e^d s_y - (e^d - 1) total / N)
        ((1 - e^-d) / N + e^-d [y = x])."""
        n = self.dim
        rows, cols = _at_column(s, x, start)
        if kind == "euler":
            w = (coef / n) * s
            w[rows, cols] = 1 - (coef / n) * (total[rows] - 1)
            return w
        d = torch.tensor(exponent, dtype=torch.float64)
        stag = d.exp() * s - (torch.expm1(d) / n) * total[:, None]
        w = stag * (-torch.expm1(-d) / n)
        w[rows, cols] = stag[rows, cols] * (-torch.expm1(-d) / n + torch.exp(-d))
        return w

    def sampler_affine(self, x, total, kind: str, coef=0.0, exponent=0.0) -> SamplerAffine:
        """Special column x. Euler: scale c / N, constant 1 - (c / N)(total - 1) at x.
        Analytic / denoiser: scale e^d and shift -(e^d - 1) total / N everywhere (the staggered
        score), gain (1 - e^-d) / N, plus e^-d at x."""
        n = self.dim
        total = total.double()
        zero = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        one = torch.ones_like(zero)
        if kind == "euler":
            a = coef / n
            return SamplerAffine(a + zero, zero, one, x, zero, 1 - a * (total - 1), one)
        d = torch.tensor(exponent, dtype=torch.float64)
        shift = -((torch.expm1(d) / n) * total)
        gain = float(-torch.expm1(-d) / n)
        special_gain = float(-torch.expm1(-d) / n + torch.exp(-d))
        scale = float(d.exp()) + zero
        return SamplerAffine(scale, shift, gain + zero, x, scale, shift, special_gain + zero)

    def log_integrand_scale(self, sigma, dsigma, k, length: int):
        """log(sigma' (L + k log(N) / (e^sigma - 1))): a base term per position plus a term per
        redrawn position (its log-score enters with weight 1 / (e^sigma - 1))."""
        per_redrawn = math.log(self.num_tokens) * torch.exp(-log_expm1(sigma))
        return torch.log(dsigma) + torch.log(length + k * per_redrawn)

    def prior_kl(self, sigma) -> torch.Tensor:
        """p_base is uniform; with q = 1 - e^{-sigma}, p_{sigma|0} is 1 - q + q/N on x0 and q/N
        elsewhere: KL = (1 + (N - 1) e^{-sigma})/N log(1 + (N - 1) e^{-sigma})
        + (N - 1)/N q log q."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        n = self.num_tokens
        stay = (n - 1) * torch.exp(-sigma)
        q = -torch.expm1(-sigma)
        return ((1 + stay) * torch.log1p(stay) + (n - 1) * torch.xlogy(q, q)) / n

    def score_entropy_stats(self, log_score, x_t, x0, vocab_offset: int = 0, num_valid=None):
        """Shard sums: exp_sum = sum_{y != x} e^{s_y}, log_sum = sum_{y != x} s_y, at_x0 = s_x0.

        Column x is excluded exactly (not subtracted: at small sigma the other terms sum to
        about sigma, far below e^{s_x} = 1). Columns from ``num_valid`` on are ignored.
        """
        s = log_score.to(_stats_dtype(log_score))
        weights = _column_weights(s, num_valid)
        s_x, holds_x, local_x = _gather_shard(s, x_t, vocab_offset)
        index = local_x.clamp(0, s.shape[-1] - 1)[..., None]
        is_x = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
        is_x.scatter_(-1, index, holds_x[..., None])
        exp_sum = s.exp().masked_fill(is_x, 0.0) @ weights
        at_x0, _, _ = _gather_shard(s, x0, vocab_offset)
        return ScoreEntropyStats(exp_sum, at_x0, s @ weights - s_x)

    def score_entropy_from_stats(self, stats, sigma, x_t, x0):
        """Combine the reductions with float64 coefficients of sigma (see the class docstring)."""
        n = self.dim
        a = n * torch.exp(-log_expm1(_bcast(sigma, x_t).double()))  # N / (e^sigma - 1)
        rho, log1p_a = 1 / (1 + a), torch.log1p(a)
        exp_sum, at_x0, log_sum = (v.double() for v in (stats.exp_sum, stats.at_x0, stats.log_sum))
        same = x_t == x0
        neg = torch.where(same, rho * log_sum, a * at_x0 + log_sum) / n
        const_same = (n - 1) * rho * (-log1p_a - 1)
        const_diff = (1 + a) * (log1p_a - 1) - (n - 2)
        const = torch.where(same, const_same, const_diff) / n
        return (exp_sum / n - neg + const).to(stats.exp_sum.dtype)


GRAPHS: dict[str, type[Graph]] = {cls.name: cls for cls in (Absorbing, Uniform)}
"""The one registry of graph names: validate and list names with it (``tuple(GRAPHS)``)."""


def graph_class(name: str) -> type[Graph]:
    """The graph class registered as ``name``; ValueError for an unknown name."""
    if name not in GRAPHS:
        expected = " or ".join(repr(known) for known in GRAPHS)
        raise ValueError(f"unknown graph {name!r} (expected {expected})")
    return GRAPHS[name]


def get_graph(name: str, num_tokens: int) -> Graph:
    """``"absorb"`` (dim = num_tokens + 1, MASK id = num_tokens) or ``"uniform"`` (dim = N)."""
    return graph_class(name)(num_tokens)
