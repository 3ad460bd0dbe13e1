"""Score models the sampler drives: the plain-PyTorch twin, and SEDDModel on TP/PP layers.

A score model gives the log-score of this rank's vocabulary shard on the rank that samples, and
the few collectives the sampler needs:

* ``log_score(x (B, L), sigma (B,))``: float32 (B, L, V_local) on the last pipeline stage
  (columns [vocab_start, vocab_start + V_local); real rows end at ``vocab_end``), None elsewhere.
* ``all_reduce_sum(t)``: sum over the tensor-parallel group (per-token vocabulary sums).
* ``best_over_shards(value (R,), index (R,))``: the index of the largest value over the
  tensor-parallel group (ties: the lowest rank, i.e. the lowest column, as a global argmax).
* ``share_tokens(x)``: the last stage's tokens on every pipeline stage.
* ``dp_rank`` / ``dp_size`` / ``gather_objects``: data-parallel replicas split the batches.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist

from sedd_megatron.diffusion import Graph, Noise, get_graph, get_noise


class PlainScoreModel:
    """The plain twin (``sedd_megatron.plain.SEDD``) in one process: the whole vocabulary."""

    tp_size, dp_rank, dp_size, is_last_stage = 1, 0, 1, True

    def __init__(self, model, seq_length: int | None = None):
        config = model.config
        self.model = model.eval()
        self.graph: Graph = get_graph(config.graph, config.tokens)
        self.noise: Noise = get_noise(config.noise_type, config.sigma_min, config.sigma_max)
        self.seq_length = seq_length or config.length
        self.device = next(model.parameters()).device
        self.vocab_start, self.vocab_end = 0, self.graph.dim

    @classmethod
    def from_pretrained(cls, path, seq_length: int | None = None, device=None):
        from sedd_megatron.plain import SEDD

        model = SEDD.from_pretrained(path)
        return cls(model.to(device) if device else model, seq_length)

    @torch.no_grad()
    def log_score(self, x, sigma):
        return self.model(x, sigma).float()

    def all_reduce_sum(self, t):
        return t

    def best_over_shards(self, value, index):
        return index

    def share_tokens(self, x):
        return x

    def gather_objects(self, obj):
        return [obj]


@dataclass
class ModelInfo:
    """What the sampler needs to know about a Megatron model."""

    graph: str
    num_tokens: int
    noise: str
    sigma_min: float = 1e-4
    sigma_max: float = 20.0
    seq_length: int = 1024

    @classmethod
    def from_any(cls, info) -> "ModelInfo":
        """From ``load_sedd_model``'s info (a dict or an object with these attributes)."""
        get = info.get if isinstance(info, dict) else lambda k, d=None: getattr(info, k, d)
        noise = get("noise_type", None) or get("noise", None)
        if noise is None:
            raise ValueError("model info lacks the noise schedule ('noise_type' or 'noise')")
        return cls(
            graph=get("graph"),
            num_tokens=int(get("num_tokens")),
            noise=noise if isinstance(noise, str) else type(noise).__name__,
            sigma_min=float(get("sigma_min", 1e-4)),
            sigma_max=float(get("sigma_max", 20.0)),
            seq_length=int(get("seq_length", 1024)),
        )


class MegatronScoreModel:
    """This rank's pipeline stage of SEDDModel; parallel state from ``init_distributed``."""

    def __init__(self, model, info, seq_length: int | None = None):
        from megatron.core import parallel_state as ps

        if isinstance(model, list):
            if len(model) != 1:
                raise ValueError("sampling supports one model chunk per rank (no virtual PP)")
            model = model[0]
        info = ModelInfo.from_any(info)
        self.model = model.eval()
        self.graph = get_graph(info.graph, info.num_tokens)
        self.noise = get_noise(info.noise, info.sigma_min, info.sigma_max)
        self.seq_length = seq_length or info.seq_length
        self.device = next(model.parameters()).device
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.pp_group = ps.get_pipeline_model_parallel_group()
        self.tp_size = ps.get_tensor_model_parallel_world_size()
        self.pp_size = ps.get_pipeline_model_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self.dp_size = ps.get_data_parallel_world_size()
        self.is_last_stage = ps.is_pipeline_last_stage()
        # one rank per model replica reports its samples (TP ranks and stages hold copies)
        self.reports = self.is_last_stage and ps.get_tensor_model_parallel_rank() == 0
        self.last_stage_rank = ps.get_pipeline_model_parallel_last_rank()
        self.vocab_start, self.vocab_end = model.vocab_range()

    @torch.no_grad()
    def log_score(self, x, sigma):
        sigma = sigma.to(self.device)
        from sedd_megatron.models.sedd.pipeline import pipeline_forward

        return pipeline_forward(self.model, x, sigma)

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
