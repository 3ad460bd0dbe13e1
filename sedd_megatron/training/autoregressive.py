"""An autoregressive baseline on the same stack: Megatron's GPTModel trained by
``megatron.training.pretrain`` on SEDD's data pipeline (benchmarks/pretrain_ar_baseline.py).

Same architecture flags as the SEDD model (width, depth, heads, FFN, rotary embeddings,
LayerNorm, no biases, untied output layer, dropout), same data, optimizer, schedule, EMA and
seed handling; only the objective differs. A training sample is the same ``seq_length`` block
of tokens x_1..x_L that SEDD sees; the model reads EOS, x_1, ..., x_{L-1} and predicts
x_1, ..., x_L, so every token of the block is scored with no context from outside it (as SEDD's
bound scores the block) and the token count per step is identical.
"""

from functools import partial

import torch

from sedd_megatron.datasets.sedd_dataset import get_batch_tokens
from sedd_megatron.errors import ConfigError
from sedd_megatron.models.sedd.ema import attach_ema
from sedd_megatron.training.metrics import STEP_METRICS
from sedd_megatron.training.step import batch_device, unwrap


def check_ar_args(args) -> None:
    """What the baseline does not support, as one ConfigError."""
    if args.context_parallel_size > 1:
        raise ConfigError("the autoregressive baseline does not support --context-parallel-size")
    if getattr(args, "num_experts", None):
        raise ConfigError("the autoregressive baseline is a dense model: drop --num-experts")


def ar_model_provider(pre_process=True, post_process=True, vp_stage=None, config=None,
                      pg_collection=None):  # fmt: skip
    """This pipeline stage's GPTModel, built from the same flags as SEDDModel (EMA attached
    unless --ema-decay 0)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import (
        HAVE_APEX,
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )
    from megatron.training import get_args
    from megatron.training.argument_utils import core_transformer_config_from_args

    args = get_args()
    if config is None:
        config = core_transformer_config_from_args(args)
    if args.transformer_impl == "transformer_engine":
        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = get_gpt_layer_local_spec(normalization=args.normalization)
        if not HAVE_APEX:  # torch's LayerNorm stands in for Apex's; it has no persistent kernel
            config.persist_layer_norm = False
    model = GPTModel(
        config,
        spec,
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
        vp_stage=vp_stage,
        pg_collection=pg_collection,
    )
    if args.ema_decay > 0:
        attach_ema(model, args.ema_decay)
    return model


def shift_right(tokens: torch.Tensor, bos_id: int) -> torch.Tensor:
    """(b, L) x_1..x_L -> (b, L) BOS, x_1..x_{L-1}: the inputs that predict ``tokens``."""
    bos = torch.full_like(tokens[:, :1], bos_id)
    return torch.cat([bos, tokens[:, :-1]], dim=1)


def position_ids(batch: int, length: int, device) -> torch.Tensor:
    return torch.arange(length, device=device).unsqueeze(0).expand(batch, length)


def make_ar_forward_step(args, bos_id: int):
    """The ``forward_step_func``: next-token cross-entropy over each block, BOS first."""

    def forward_step(data_iterator, model):
        unwrapped = unwrap(model)
        tokens = inputs = None
        if unwrapped.pre_process or unwrapped.post_process:
            tokens = get_batch_tokens(data_iterator, args.micro_batch_size, args.seq_length)
            tokens = tokens.to(batch_device())
            inputs = shift_right(tokens, bos_id)
        positions = None if inputs is None else position_ids(*inputs.shape, inputs.device)
        output = model(inputs, positions, None, labels=tokens)
        return output, ar_loss_func

    return forward_step


def ar_loss_func(per_token_loss: torch.Tensor):
    """Megatron loss function: (summed nats, token count, the reported nats/token)."""
    total = per_token_loss.float().sum()
    count = per_token_loss.numel()
    STEP_METRICS.add(total.detach(), count)
    report = torch.stack([total.detach().clone(), torch.tensor(float(count), device=total.device)])
    return total, torch.tensor(count, dtype=torch.int, device=total.device), {"lm loss": report}


def full_vocab_logits(model, bos_id: int, vocab_size: int):
    """``tokens (b, L) -> logits (b, L, vocab_size)`` of a trained single-stage GPTModel (no
    pipeline parallelism), gathered over tensor-parallel ranks, padding columns dropped."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    def logits_fn(tokens: torch.Tensor) -> torch.Tensor:
        inputs = shift_right(tokens, bos_id)
        logits = model(inputs, position_ids(*inputs.shape, inputs.device), None)
        logits = gather_from_tensor_model_parallel_region(logits)
        return logits[..., :vocab_size]

    return partial(_no_grad_eval, logits_fn)


def _no_grad_eval(fn, *a):
    with torch.no_grad():
        return fn(*a)
