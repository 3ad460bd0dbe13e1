"""SEDD diffusion math in pure PyTorch (no Megatron): graphs, noise schedules, score-entropy loss,
categorical sampling and reverse-process samplers. See docs/math.md §1-5."""

from .categorical import exponential_noise, randint, sample_categorical, uniform
from .graph import (
    GRAPHS,
    Absorbing,
    Graph,
    ScoreEntropyStats,
    Uniform,
    get_graph,
    graph_class,
    log_expm1,
)
from .loss import ScoreFn, sample_t, score_entropy_loss, sequence_loss
from .noise import GeometricNoise, LogLinearNoise, Noise, SigmaNoise, get_noise, score_log_expm1
from .sampling import (
    PREDICTORS,
    analytic_probs,
    clamp_projector,
    denoiser_probs,
    euler_probs,
    mask_projector,
    sample,
    time_grid,
)

__all__ = [
    "Absorbing",
    "GRAPHS",
    "GeometricNoise",
    "Graph",
    "LogLinearNoise",
    "Noise",
    "PREDICTORS",
    "ScoreEntropyStats",
    "ScoreFn",
    "SigmaNoise",
    "Uniform",
    "analytic_probs",
    "clamp_projector",
    "denoiser_probs",
    "euler_probs",
    "exponential_noise",
    "get_graph",
    "get_noise",
    "graph_class",
    "log_expm1",
    "mask_projector",
    "randint",
    "sample",
    "sample_categorical",
    "sample_t",
    "score_entropy_loss",
    "score_log_expm1",
    "sequence_loss",
    "time_grid",
    "uniform",
]
