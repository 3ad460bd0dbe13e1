"""One interface to a loaded SEDD model, for the sampler, the ELBO estimator and verification.

A :class:`ScoreModel` is either :class:`PlainScoreModel` (the plain-PyTorch twin,
``sedd_megatron.plain.SEDD``, the whole vocabulary in one process) or
:class:`MegatronScoreModel` (this rank's pipeline stage of a ``SEDDModel`` on the current
TP/PP layout; Megatron's parallel state must be initialised). Open one from a directory with
:func:`sedd_megatron.checkpoint.open_model`.

What every score model offers:

* ``graph``, ``noise``, ``seq_length``, ``num_tokens``, ``device``, ``description`` (a JSON-able
  dict: backend, layout, source, ...);
* ``log_score(x (B, L), sigma (B,))``: float32 (B, L, V_local) on the last pipeline stage
  (columns [vocab_start, vocab_start + V_local); real rows end at ``vocab_end``), None elsewhere;
* ``score_entropy(x_t (B, L), sigma (B,), x0 (B, L))``: the per-token score entropy (B, L)
  float32 on the model's device (no host synchronisation) on reporting ranks (``reports``:
  last stage, tensor-parallel rank 0), None elsewhere;
* ``full_log_score(x, sigma)``: float32 (B, L, V') over every vocabulary row (padding dropped)
  on every rank, on the CPU (collective; for verification, not for speed);
* ``time_independent``: whether the network ignores sigma (``time_conditioning="none"``;
  its log-score then moves with sigma only by -log(e^sigma - 1), so the sampler may reuse it);
* ``tp_size``, ``is_last_stage``, ``reports``, ``dp_rank`` / ``dp_size`` (data-parallel replicas
  split batches or evaluation blocks);
* the sampler's collectives: ``all_reduce_sum(t)`` (sum over the tensor-parallel group),
  ``best_over_shards(value (R,), index (R,))`` (the index of the largest value over the
  tensor-parallel group; ties: the lowest rank, i.e. a global argmax), ``share_tokens(x)`` (the
  last stage's tokens on every pipeline stage) and ``gather_objects(obj)`` (every replica's
  ``obj`` on every rank).

Every rank of a model replica must make the same calls (pipeline and TP collectives).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist

from sedd_megatron.diffusion import Graph, Noise, get_graph, get_noise
from sedd_megatron.plain import SEDD


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """``tensor`` on ``device``; from the CPU to a GPU through pinned memory without blocking
    the host, so that inputs queue up behind the model's kernels."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@runtime_checkable
class ScoreModel(Protocol):
    """A loaded SEDD model as the sampler and the ELBO estimator use it (see module docstring)."""

    graph: Graph
    noise: Noise
    seq_length: int
    device: torch.device
    description: dict
    vocab_start: int
    vocab_end: int
    tp_size: int
    dp_rank: int
    dp_size: int
    is_last_stage: bool
    reports: bool
    time_independent: bool

    @property
    def num_tokens(self) -> int: ...

    def log_score(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor | None: ...

    def score_entropy(
        self, x_t: torch.Tensor, sigma: torch.Tensor, x0: torch.Tensor
    ) -> torch.Tensor | None: ...

    def full_log_score(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor: ...

    def best_over_shards(self, value: torch.Tensor, index: torch.Tensor) -> torch.Tensor: ...

    def share_tokens(self, x: torch.Tensor) -> torch.Tensor: ...

    def gather_objects(self, obj: Any) -> list: ...


class PlainScoreModel:
    """The plain twin (``sedd_megatron.plain.SEDD``) in one process: the whole vocabulary."""

    tp_size, dp_rank, dp_size, is_last_stage, reports = 1, 0, 1, True, True

    def __init__(self, model, seq_length: int | None = None, source=None):
        config = model.config
        self.model = model.eval()
        self.graph: Graph = get_graph(config.graph, config.tokens)
        self.noise: Noise = get_noise(config.noise_type, config.sigma_min, config.sigma_max)
        self.seq_length = seq_length or config.length
        self.device = next(model.parameters()).device
        self.vocab_start, self.vocab_end = 0, self.graph.dim
        self.description = {"backend": "plain", "graph": config.graph, "tokens": config.tokens}
        self.time_independent = config.time_conditioning == "none"
        if self.time_independent:
            self.description["time_conditioning"] = "none"
        if source is not None:
            self.description["source"] = str(source)

    @classmethod
    def from_pretrained(cls, path, seq_length: int | None = None, device=None, verify=True):
        """A published-layout directory (config.json + weights), on ``device`` if given
        (``verify``: check its checksum manifest first)."""
        model = SEDD.from_pretrained(path, verify_checksums=verify)
        return cls(model.to(device) if device else model, seq_length, source=path)

    @property
    def num_tokens(self) -> int:
        return self.graph.num_tokens

    @torch.no_grad()
    def log_score(self, x, sigma):
        return self.model(x, sigma).float()

    @torch.inference_mode()
    def score_entropy(self, x_t, sigma, x0):
        x_t, sigma, x0 = (to_device(v, self.device) for v in (x_t, sigma, x0))
        log_score = self.model(x_t, sigma)
        return self.graph.score_entropy(log_score, sigma[:, None], x_t, x0).float()

    @torch.no_grad()
    def full_log_score(self, x, sigma):
        return self.model(x.to(self.device), sigma.to(self.device)).float().cpu()

    def all_reduce_sum(self, t):
        return t

    def best_over_shards(self, value, index):
        return index

    def share_tokens(self, x):
        return x

    def gather_objects(self, obj):
        return [obj]


class MegatronScoreModel:
    """This rank's pipeline stage of SEDDModel, with ``info`` from ``load_sedd_model``
    (graph, num_tokens, noise_type, sigma_min, sigma_max, seq_length; source, iteration and
    ema when known). Megatron's parallel state must be initialised."""

    def __init__(self, model, info, seq_length: int | None = None):
        from megatron.core import parallel_state as ps

        if isinstance(model, list):
            if len(model) != 1:
                raise ValueError("one model chunk per rank is supported (no virtual PP)")
            model = model[0]
        self.model = model.eval()
        self.graph = get_graph(info.graph, int(info.num_tokens))
        self.noise = get_noise(info.noise_type, float(info.sigma_min), float(info.sigma_max))
        self.seq_length = int(seq_length or info.seq_length)
        self.device = next(model.parameters()).device
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.pp_group = ps.get_pipeline_model_parallel_group()
        self.tp_size = ps.get_tensor_model_parallel_world_size()
        self.pp_size = ps.get_pipeline_model_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self.dp_size = ps.get_data_parallel_world_size()
        self.is_last_stage = ps.is_pipeline_last_stage()
        # one rank per model replica reports its outputs (TP ranks and stages hold copies)
        self.reports = self.is_last_stage and ps.get_tensor_model_parallel_rank() == 0
        self.last_stage_rank = ps.get_pipeline_model_parallel_last_rank()
        self.vocab_start, self.vocab_end = model.vocab_range()
        source = getattr(info, "source", None)
        self.description = {
            "backend": "megatron",
            "tp": self.tp_size,
            "pp": self.pp_size,
            "dp": self.dp_size,
            "source": None if source is None else str(source),
            "iteration": getattr(info, "iteration", None),
            "ema": getattr(info, "ema", None),
        }
        self.time_independent = getattr(model.config, "time_conditioning", "sigma") == "none"
        if self.time_independent:
            self.description["time_conditioning"] = "none"

    @property
    def num_tokens(self) -> int:
        return self.graph.num_tokens

    @torch.no_grad()
    def log_score(self, x, sigma):
        from sedd_megatron.models.sedd.pipeline import pipeline_forward  # lazy: imports megatron

        return pipeline_forward(self.model, x, sigma.to(self.device))

    @torch.no_grad()
    def score_entropy(self, x_t, sigma, x0):
        from sedd_megatron.models.sedd.pipeline import pipeline_forward  # lazy: imports megatron

        x_t, sigma, x0 = (to_device(v, self.device) for v in (x_t, sigma, x0))
        out = pipeline_forward(self.model, x_t, sigma, x0)
        return out.float() if (out is not None and self.reports) else None

    @torch.no_grad()
    def full_log_score(self, x, sigma):
        """Every TP shard gathered and the last stage's result broadcast over the pipeline."""
        shard = self.log_score(x.to(self.device), sigma)
        full = None
        if self.is_last_stage:
            parts = [torch.empty_like(shard) for _ in range(self.tp_size)]
            dist.all_gather(parts, shard.contiguous(), group=self.tp_group)
            full = torch.cat(parts, dim=-1)[..., : self.graph.dim].float().cpu()
        if self.pp_size > 1:
            box = [full]
            dist.broadcast_object_list(box, src=self.last_stage_rank, group=self.pp_group)
            full = box[0]
        return full

    def all_reduce_sum(self, t):
        if self.tp_size > 1:
            dist.all_reduce(t, group=self.tp_group)
        return t

    def best_over_shards(self, value, index):
        if self.tp_size == 1:
            return index
        values = [torch.empty_like(value) for _ in range(self.tp_size)]
        indices = [torch.empty_like(index) for _ in range(self.tp_size)]
        dist.all_gather(values, value.contiguous(), group=self.tp_group)
        dist.all_gather(indices, index.contiguous(), group=self.tp_group)
        winner = torch.stack(values).argmax(0)
        return torch.stack(indices).gather(0, winner[None]).squeeze(0)

    def share_tokens(self, x):
        if self.pp_size > 1:
            dist.broadcast(x, src=self.last_stage_rank, group=self.pp_group)
        return x

    def gather_objects(self, obj):
        """Every replica's ``obj`` (one per data-parallel replica), on every rank."""
        if dist.get_world_size() == 1:
            return [obj]
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj if self.reports else None)
        return [o for o in out if o is not None]
