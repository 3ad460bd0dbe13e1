"""Score-entropy "scorers": (x_t, sigma, x0) -> per-token score entropy, for the plain PyTorch
SEDD and for the Megatron SEDDModel (TP/PP, data parallel over evaluation blocks).

A scorer has ``graph``, ``noise``, ``seq_length``, ``device``; ``reports`` (whether this rank
holds the outputs: the last pipeline stage, tensor-parallel rank 0); ``dp_rank``/``dp_size`` (how
evaluation blocks are split); and ``__call__(x_t [B, L] int64, sigma [B] float32, x0 [B, L])``
returning the per-token score entropy [B, L] (float32, CPU) on reporting ranks, None elsewhere.
Every rank of a model replica must make the same calls (pipeline and TP collectives).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sedd_megatron.diffusion import get_graph, get_noise
from sedd_megatron.evaluation.errors import EvalError


class PlainScorer:
    """The plain PyTorch SEDD twin (``sedd_megatron.plain.SEDD``), single process."""

    reports, dp_rank, dp_size = True, 0, 1

    def __init__(self, model):
        self.model = model.eval()
        config = model.config
        self.graph = get_graph(config.graph, config.tokens)
        self.noise = get_noise(config.noise_type, config.sigma_min, config.sigma_max)
        self.seq_length = config.length
        self.num_tokens = config.tokens
        self.device = next(model.parameters()).device
        self.description = {"backend": "plain", "graph": config.graph, "tokens": config.tokens}

    @torch.inference_mode()
    def __call__(self, x_t, sigma, x0):
        x_t, sigma, x0 = (v.to(self.device) for v in (x_t, sigma, x0))
        log_score = self.model(x_t, sigma)
        return self.graph.score_entropy(log_score, sigma[:, None], x_t, x0).float().cpu()


class MegatronScorer:
    """This rank's pipeline stage of a Megatron SEDDModel; call on every rank of the replica."""

    def __init__(self, model, *, graph, noise, seq_length: int, description: dict | None = None):
        from megatron.core import parallel_state as ps

        self.model = model.eval()
        self.graph, self.noise, self.seq_length = graph, noise, seq_length
        self.num_tokens = graph.num_tokens
        self.pp = ps.get_pipeline_model_parallel_world_size()
        last = ps.is_pipeline_last_stage()
        self.reports = last and ps.get_tensor_model_parallel_rank() == 0
        self.dp_rank = ps.get_data_parallel_rank()
        self.dp_size = ps.get_data_parallel_world_size()
        self.device = next(model.parameters()).device
        self.description = {
            "backend": "megatron",
            "tp": ps.get_tensor_model_parallel_world_size(),
            "pp": self.pp,
            "dp": self.dp_size,
            **(description or {}),
        }

    @torch.no_grad()
    def __call__(self, x_t, sigma, x0):
        x_t, sigma, x0 = (v.to(self.device) for v in (x_t, sigma, x0))
        from sedd_megatron.models.sedd.pipeline import pipeline_forward

        out = pipeline_forward(self.model, x_t, sigma, x0)
        return out.float().cpu() if (out is not None and self.reports) else None


def is_plain_dir(path: str | os.PathLike) -> bool:
    """A published-layout directory (config.json + weights), loadable by plain.SEDD."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


def _info(info, *names, default=None):
    for name in names:
        if isinstance(info, dict) and name in info:
            return info[name]
        if hasattr(info, name):
            return getattr(info, name)
    return default


def megatron_scorer(
    source: str | os.PathLike,
    *,
    iteration: int | None = None,
    use_ema: bool | None = None,
    seq_length: int | None = None,
) -> MegatronScorer:
    """Load ``source`` (a pretrain_sedd.py checkpoint or a plain directory) as this rank's stage
    with ``sedd_megatron.checkpoint.load_sedd_model`` (``use_ema`` None: EMA weights if saved);
    torch.distributed and Megatron's parallel state must be initialised (``init_distributed``)."""
    from sedd_megatron.checkpoint import load_sedd_model

    if not Path(source).exists():
        raise EvalError(f"model not found: {source}")
    model, info = load_sedd_model(
        source, iteration=iteration, use_ema=use_ema, seq_length=seq_length
    )
    graph_name = _info(info, "graph", "graph_type", default=None) or model.config.graph
    num_tokens = _info(info, "num_tokens", "tokens", default=None) or model.config.num_tokens
    noise_type = _info(info, "noise_type", "noise", default="loglinear")
    if not isinstance(noise_type, str):  # a Noise object
        noise = noise_type
    else:
        noise = get_noise(
            noise_type,
            _info(info, "sigma_min", default=1e-4),
            _info(info, "sigma_max", default=20.0),
        )
    graph = graph_name if not isinstance(graph_name, str) else get_graph(graph_name, num_tokens)
    length = seq_length or _info(info, "seq_length", "length", default=None)
    if length is None:
        length = model.max_sequence_length
    description = {
        "source": str(source),
        "iteration": _info(info, "iteration", default=None),
        "ema": _info(info, "ema", default=None),
    }
    return MegatronScorer(
        model, graph=graph, noise=noise, seq_length=int(length), description=description
    )


def plain_scorer(source: str | os.PathLike, device: str | None = None) -> PlainScorer:
    """A published-layout directory as a single-process PlainScorer."""
    from sedd_megatron.plain import SEDD
    from sedd_megatron.plain.layout import CheckpointError

    if not Path(source).exists():
        raise EvalError(f"model not found: {source}")
    try:
        model = SEDD.from_pretrained(source)
    except CheckpointError as err:
        raise EvalError(str(err)) from None
    if device:
        model.to(device)
    scorer = PlainScorer(model)
    scorer.description["source"] = str(source)
    return scorer
