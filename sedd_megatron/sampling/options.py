"""Sampling settings and their checks: one rule per setting, shared by the library
(:class:`SamplingOptions`, :func:`~sedd_megatron.sampling.generate`) and the command line
(``tools/generate_sedd.py`` turns the same checks into argparse types).

Every problem raises one :class:`~sedd_megatron.errors.ConfigError` naming the setting and the
value. This module imports nothing but the standard library, ``sedd_megatron.errors`` and
``sedd_megatron.datasets.checks``.
"""

import math
import numbers
from dataclasses import dataclass

from sedd_megatron.datasets.checks import check_memory
from sedd_megatron.errors import ConfigError

PREDICTORS = ("analytic", "euler", "none")
#: seeds key the sampler's random streams as 64-bit words (``rng.sample_key``) and
#: seed torch's global generator (``--fp32-sampling``): non-negative and below 2**63
MAX_SEED = 2**63 - 1


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_at_least(name: str, value, low: int) -> int:
    """``value`` as an int if it is an integer >= ``low``; else ConfigError."""
    value = _integer(name, value)
    if value < low:
        what = "positive" if low == 1 else f">= {low}" if low else "non-negative"
        raise ConfigError(f"{name} must be {what}, got {value}")
    return value


#: A lower bound on the memory one step of the sampler's schedule holds (its float32 time and
#: its ``Step`` record: ~236 bytes measured with CPython 3.12), for :func:`check_steps`.
STEP_BYTES = 200


def check_steps(steps) -> int:
    """Predictor steps: at least 1, and few enough that the schedule fits in memory."""
    steps = check_at_least("steps", steps, 1)
    check_memory(
        "steps", steps, STEP_BYTES, "the sampler's schedule, one entry per step", ConfigError
    )
    return steps


def check_eps(eps) -> float:
    """The last time of the reverse process: a number strictly between 0 and 1 (t runs from 1
    down to eps; eps >= 1 leaves every token masked, eps <= 0 is the singular t = 0)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ConfigError(f"eps must be a number, got {eps!r}")
    if not (math.isfinite(eps) and 0 < eps < 1):
        raise ConfigError(f"eps must lie strictly between 0 and 1 (e.g. 1e-5), got {eps}")
    return float(eps)


def check_predictor(predictor) -> str:
    if predictor not in PREDICTORS:
        raise ConfigError(f"unknown predictor {predictor!r} (expected {', '.join(PREDICTORS)})")
    return predictor


def check_num_samples(num_samples) -> int:
    """Samples per prompt: at least 1."""
    return check_at_least("num_samples", num_samples, 1)


def check_batch_size(batch_size) -> int:
    """Samples drawn together: at least 1."""
    return check_at_least("batch_size", batch_size, 1)


def check_seq_length(seq_length) -> int:
    """Tokens per sample: at least 1. (The models use rotary position embeddings, so a
    sequence may be longer than the training length; there is no upper limit here.)"""
    return check_at_least("seq_length", seq_length, 1)


def check_seed(seed) -> int:
    """A seed in [0, 2**63)."""
    seed = check_at_least("seed", seed, 0)
    if seed > MAX_SEED:
        raise ConfigError(f"seed must be below 2**63, got {seed}")
    return seed


def check_iteration(iteration) -> int:
    """A checkpoint iteration number: non-negative."""
    return check_at_least("iteration", iteration, 0)


def check_run(
    num_samples: int, batch_size: int, seed: int = 0, seq_length: int | None = None
) -> None:
    """The settings of a generation run besides the sampler's (:class:`SamplingOptions`)."""
    check_num_samples(num_samples)
    check_batch_size(batch_size)
    check_seed(seed)
    if seq_length is not None:
        check_seq_length(seq_length)


@dataclass(frozen=True)
class SamplingOptions:
    """predictor: analytic (default), euler or none (only the denoiser draws); steps (>= 1);
    eps: the last time, in (0, 1); denoise: final denoising step; fp32_sampling: the
    reference's float32 draws; reuse_unchanged: rows in which no token changed since the last
    forward pass reuse that pass's log-score, shifted to the new sigma, instead of running the
    model again (None: on for time-independent models, where it is exact, off otherwise; True
    on a sigma-conditioned model is an approximation; not with fp32_sampling). Invalid values
    raise ConfigError."""

    predictor: str = "analytic"
    steps: int = 128
    eps: float = 1e-5
    denoise: bool = True
    fp32_sampling: bool = False
    reuse_unchanged: bool | None = None

    def __post_init__(self):
        check_predictor(self.predictor)
        object.__setattr__(self, "steps", check_steps(self.steps))
        object.__setattr__(self, "eps", check_eps(self.eps))
        for name in ("denoise", "fp32_sampling"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.reuse_unchanged is not None and not isinstance(self.reuse_unchanged, bool):
            raise ConfigError(
                f"reuse_unchanged must be True, False or None (auto), got {self.reuse_unchanged!r}"
            )
        if self.reuse_unchanged and self.fp32_sampling:
            raise ConfigError(
                "reuse_unchanged cannot be combined with fp32_sampling (the reference's draws "
                "run the model at every step)"
            )

    def reuse_for(self, time_independent: bool) -> bool:
        """Whether the sampler reuses unchanged rows' scores for a model of this kind."""
        if self.fp32_sampling:
            return False
        return time_independent if self.reuse_unchanged is None else self.reuse_unchanged

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        if out["reuse_unchanged"] is None:  # auto: recorded by the sampler as "reuse_scores"
            del out["reuse_unchanged"]
        return out
