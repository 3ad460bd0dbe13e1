"""Model provider, forward step and loss for pretrain_sedd.py (megatron.training.pretrain).

The noise of each micro-batch (t ~ U(eps, 1) and x_t ~ p_t(.|x0)) is drawn from a generator
seeded by (seed, iteration, micro-batch index, data-parallel rank, train/eval). Every tensor- and
pipeline-parallel rank of a replica therefore draws the same t and x_t without communication, and
a resumed run draws exactly what an uninterrupted one would.

The gradient is that of the reference objective, the mean over sequences of
sum_l dsigma(t) * SE_l (so gradient clipping acts as in the reference); the reported
``lm loss`` is the same quantity per token, in nats. Under context parallelism each rank holds
part of every sequence (Megatron's two-chunk layout); Megatron's DDP sums the partial gradients
over the context-parallel ranks.
"""

import copy
from functools import partial

import numpy as np
import torch

from sedd_megatron.datasets.sedd_dataset import get_batch_tokens
from sedd_megatron.diffusion import get_graph, get_noise, sample_t
from sedd_megatron.kernels.dispatch import fused_kernel_status_of
from sedd_megatron.models.sedd import (
    SEDDModel,
    SEDDTransformerConfig,
    get_sedd_layer_spec,
    padded_vocab_size,
)
from sedd_megatron.models.sedd.context_parallel import split_for_context_parallel
from sedd_megatron.models.sedd.ema import attach_ema
from sedd_megatron.models.sedd.sedd_model import sync_conditioning
from sedd_megatron.training.metrics import STEP_METRICS


def sedd_config_from_args(args, num_tokens: int) -> SEDDTransformerConfig:
    """SEDDTransformerConfig from Megatron args plus the SEDD argument group."""
    from megatron.training.argument_utils import core_transformer_config_from_args

    namespace = copy.copy(args)
    namespace.graph = args.sedd_graph
    namespace.num_tokens = num_tokens
    namespace.cond_dim = args.sedd_cond_dim
    namespace.scale_by_sigma = args.sedd_scale_by_sigma
    # older checkpoints' args lack the flag: the reference (sigma-conditioned) model
    namespace.time_conditioning = getattr(args, "sedd_time_conditioning", "sigma")
    namespace.fused_kernels = getattr(args, "sedd_fused_kernels", True)  # older checkpoints: on
    return core_transformer_config_from_args(namespace, config_class=SEDDTransformerConfig)


def num_data_tokens() -> int:
    from megatron.training import get_tokenizer

    return get_tokenizer().vocab_size


_FUSED_STATUS_PRINTED = False


def report_fused_kernels(config) -> None:
    """Prints which fused kernels the model runs (``kernels.dispatch.fused_kernel_status``),
    once per process (the first model built) and on global rank 0 only."""
    global _FUSED_STATUS_PRINTED
    if _FUSED_STATUS_PRINTED:
        return
    _FUSED_STATUS_PRINTED = True
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    print(fused_kernel_status_of(config), flush=True)


def model_provider(pre_process=True, post_process=True, vp_stage=None, config=None,
                   pg_collection=None) -> SEDDModel:  # fmt: skip
    """Build this pipeline stage's SEDDModel (with EMA weights attached unless disabled)."""
    from megatron.training import get_args

    args = get_args()
    if not isinstance(config, SEDDTransformerConfig):
        config = sedd_config_from_args(args, num_data_tokens())
    report_fused_kernels(config)
    use_te = args.transformer_impl == "transformer_engine"
    model = SEDDModel(
        config,
        get_sedd_layer_spec(use_transformer_engine=use_te, qk_layernorm=config.qk_layernorm),
        vocab_size=padded_vocab_size(
            config.vocab_rows, args.tensor_model_parallel_size, args.make_vocab_size_divisible_by
        ),
        max_sequence_length=args.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        vp_stage=vp_stage,
        pg_collection=pg_collection,
    )
    _sync_conditioning(model, vp_stage)
    if args.ema_decay > 0:
        attach_ema(model, args.ema_decay)
    return model


_FIRST_CHUNK: list = []  # this rank's virtual-stage-0 model, the copy source for later chunks


def _sync_conditioning(model: SEDDModel, vp_stage) -> None:
    """Every pipeline stage and virtual stage starts from the first stage's conditioning
    weights (``sync_conditioning``). Megatron builds a rank's chunks in order, 0 first: chunk 0
    takes the values from the first stage (collective), later chunks copy chunk 0's."""
    if not vp_stage:
        sync_conditioning(model)
        _FIRST_CHUNK[:] = [model]
    else:
        sync_conditioning(model, source=_FIRST_CHUNK[0])


class NoiseStream:
    """Per-micro-batch generators, identical across TP/PP ranks of one data-parallel replica."""

    def __init__(self, seed: int):
        self.seed = seed
        self.key = None
        self.index = 0

    def generator(self, iteration: int, training: bool, dp_rank: int, device) -> torch.Generator:
        key = (iteration, training)
        self.index = self.index + 1 if key == self.key else 0
        self.key = key
        entropy = [self.seed, iteration, self.index, dp_rank, int(training)]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)
        return torch.Generator(device=device).manual_seed(seed)


def batch_device():
    """Where a micro-batch goes: this rank's GPU, else the CPU."""
    return torch.device(torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"


def unwrap(model):
    """The model inside Megatron's wrappers (DDP, Float16Module)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def make_forward_step(args):
    """The ``forward_step_func`` for ``pretrain``."""
    from megatron.core import parallel_state as ps

    graph = get_graph(args.sedd_graph, num_data_tokens())
    noise = get_noise(args.sedd_noise, sigma_min=args.sedd_sigma_min, sigma_max=args.sedd_sigma_max)
    stream = NoiseStream(args.seed)

    def forward_step(data_iterator, model):
        unwrapped = unwrap(model)
        pre, post = unwrapped.pre_process, unwrapped.post_process
        device = batch_device()
        tokens = None
        if pre or post:
            tokens = get_batch_tokens(data_iterator, args.micro_batch_size, args.seq_length)
            tokens = tokens.to(device)
        gen = stream.generator(
            getattr(args, "curr_iteration", 0) or 0,
            model.training,
            ps.get_data_parallel_rank(),
            device,
        )
        t = sample_t(args.micro_batch_size, args.sedd_sampling_eps, device=device, generator=gen)
        sigma, dsigma = noise(t)
        x_t = None if tokens is None else graph.sample_transition(tokens, sigma[:, None], gen)
        if tokens is not None and ps.get_context_parallel_world_size() > 1:
            # Drawn for the whole sequence above (same draws as without CP), then split.
            cp_rank, cp_size = ps.get_context_parallel_rank(), ps.get_context_parallel_world_size()
            tokens, x_t = (split_for_context_parallel(v, cp_rank, cp_size) for v in (tokens, x_t))
        # sigma by keyword: Megatron's Float16Module casts positional float inputs to bf16/fp16.
        output = model(x_t, sigma=sigma, x0=tokens if post else None)
        return output, partial(loss_func, dsigma)

    return forward_step


def loss_func(dsigma: torch.Tensor, per_token_se: torch.Tensor):
    """Megatron loss function: (per-sequence-mean numerator, its count, the reported nats/token)."""
    per_token = dsigma[:, None].to(per_token_se.dtype) * per_token_se
    total = per_token.sum()
    sequences, tokens = per_token.shape
    STEP_METRICS.add(total.detach(), tokens * sequences)
    report = torch.stack([total.detach().clone(), torch.tensor(float(sequences * tokens),
                                                              device=total.device)])  # fmt: skip
    return total, torch.tensor(sequences, dtype=torch.int, device=total.device), {"lm loss": report}
