"""SEDDModel: the score network of Score Entropy Discrete Diffusion on Megatron-Core.

forward(x_t, sigma) -> log concrete score log s_theta(x_t, sigma), vocab-sharded over TP;
forward(x_t, sigma, x0=x0) -> per-token score entropy, computed from the shards without
gathering the vocabulary. Architecture: docs/math.md §8; no position embedding (rotary in
attention), the noise-level conditioning computed on every pipeline stage from sigma.
"""

import math

import torch
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.common.language_module.language_module import LanguageModule
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

from sedd_megatron.diffusion.noise import score_log_expm1
from sedd_megatron.models.sedd.sedd_config import SEDDTransformerConfig
from sedd_megatron.models.sedd.sedd_layers import (
    ConstantConditioning,
    SEDDFinalLayer,
    TimestepEmbedder,
)
from sedd_megatron.models.sedd.vocab_parallel_score_entropy import (
    vocab_parallel_score_entropy_from_logits,
)


def embedding_init(weight: torch.Tensor) -> torch.Tensor:
    """The reference embedding init, U(-1/sqrt(H), 1/sqrt(H)) (kaiming-uniform with a=sqrt(5))."""
    bound = 1.0 / math.sqrt(weight.shape[-1])
    return torch.nn.init.uniform_(weight, -bound, bound)


class TokenEmbedding(MegatronModule):
    """Vocab-parallel token embedding, no scaling, no position embedding, no dropout.

    A MegatronModule so that checkpointing recurses into the embedding's own (TP-sharded)
    sharded_state_dict; a plain nn.Module wrapper would be saved as if replicated.
    """

    def __init__(self, config: SEDDTransformerConfig, vocab_rows_padded: int):
        super().__init__(config=config)
        self.sequence_parallel = config.sequence_parallel
        self.word_embeddings = tensor_parallel.VocabParallelEmbedding(
            vocab_rows_padded,
            config.hidden_size,
            init_method=embedding_init,
            reduce_scatter_embeddings=config.sequence_parallel,
            config=config,
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.word_embeddings(input_ids)  # [s/tp, b, h] under SP, else [b, s, h]
        return out if self.sequence_parallel else out.transpose(0, 1).contiguous()


class _VocabParallelLogSumExp(torch.autograd.Function):
    """logsumexp over the first ``num_valid`` columns of every TP rank's vocabulary shard.

    Forward: all-reduce MAX of the local maxima, then all-reduce SUM of exp(logits - max).
    Backward: every rank's loss is the same TP-reduced value but only sees its own shard's use
    of the result, so the incoming gradients are all-reduced (SUM) before the softmax product.
    """

    @staticmethod
    def forward(ctx, logits, num_valid: int, group):
        valid = logits[..., :num_valid]
        if num_valid > 0:
            local_max = valid.amax(dim=-1)
        else:
            local_max = logits.new_full(logits.shape[:-1], float("-inf"))
        global_max = local_max.clone()
        if group.size() > 1:
            torch.distributed.all_reduce(global_max, torch.distributed.ReduceOp.MAX, group=group)
        shifted = (valid - global_max[..., None]).exp_()
        total = shifted.sum(dim=-1)
        if group.size() > 1:
            torch.distributed.all_reduce(total, group=group)
        lse = total.log_() + global_max
        ctx.save_for_backward(logits, lse)
        ctx.num_valid, ctx.group = num_valid, group
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        logits, lse = ctx.saved_tensors
        grad_lse = grad_lse.contiguous()
        if ctx.group.size() > 1:
            torch.distributed.all_reduce(grad_lse, group=ctx.group)
        grad = torch.zeros_like(logits)
        valid = logits[..., : ctx.num_valid]
        grad[..., : ctx.num_valid] = (valid - lse[..., None]).exp() * grad_lse[..., None]
        return grad, None, None


class SEDDModel(LanguageModule):
    """SEDD score network.

    Args:
        config: SEDDTransformerConfig.
        transformer_layer_spec: from ``get_sedd_layer_spec``.
        vocab_size: padded number of vocabulary rows (>= config.vocab_rows; Megatron pads for TP
            divisibility). Padded rows never reach the loss, sampling or exported weights.
        max_sequence_length: the training sequence length.
        pre_process / post_process: whether this pipeline stage holds the embedding / output.
    """

    def __init__(
        self,
        config: SEDDTransformerConfig,
        transformer_layer_spec: ModuleSpec,
        vocab_size: int,
        max_sequence_length: int,
        pre_process: bool = True,
        post_process: bool = True,
        vp_stage: int | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config, pg_collection=pg_collection)
        if vocab_size < config.vocab_rows:
            raise ValueError(
                f"vocab_size {vocab_size} is smaller than the model's {config.vocab_rows} rows"
            )
        self.config: SEDDTransformerConfig = config
        self.vocab_size = vocab_size
        self.max_sequence_length = max_sequence_length
        self.pre_process = pre_process
        self.post_process = post_process
        self.vp_stage = vp_stage
        self.share_embeddings_and_output_weights = False
        self.model_type = None  # set by Megatron's get_model

        if pre_process:
            self.embedding = TokenEmbedding(config, vocab_size)
        if config.time_conditioning == "sigma":
            self.sigma_map = TimestepEmbedder(
                config, config.cond_dim, config.frequency_embedding_size
            )
        else:
            self.cond_map = ConstantConditioning(config, config.cond_dim)
        self.rotary_pos_emb = RotaryEmbedding(
            kv_channels=config.kv_channels,
            rotary_percent=1.0,
            rotary_interleaved=False,
            rotary_base=config.rotary_base,
            use_cpu_initialization=config.use_cpu_initialization,
        )
        self.decoder = TransformerBlock(
            config=config,
            spec=transformer_layer_spec,
            pre_process=pre_process,
            post_process=post_process,
            post_layer_norm=False,
            vp_stage=vp_stage,
            pg_collection=self.pg_collection,
        )
        if post_process:
            self.output_layer = SEDDFinalLayer(config, vocab_size)

    def conditioning(self, sigma: torch.Tensor) -> torch.Tensor:
        """The adaLN conditioning vector c [b, cond_dim]."""
        if self.config.time_conditioning == "sigma":
            return self.sigma_map(sigma)
        return self.cond_map(sigma.shape[0])

    def _data_logsumexp(self, logits: torch.Tensor) -> torch.Tensor:
        """[s, b] logsumexp of the float32 logits over the data tokens (MASK and padding
        columns excluded), across the TP group."""
        start, _ = self.vocab_range()
        num_valid = max(0, min(logits.shape[-1], self.config.num_tokens - start))
        return _VocabParallelLogSumExp.apply(logits, num_valid, self.tp_group)

    def set_input_tensor(self, input_tensor) -> None:
        if isinstance(input_tensor, list):
            if len(input_tensor) != 1:
                raise ValueError("SEDDModel takes exactly one input tensor per stage")
            input_tensor = input_tensor[0]
        self.decoder.set_input_tensor(input_tensor)

    def _sequence_length(self, input_ids: torch.Tensor | None) -> int:
        """The full sequence length (rotary slices its own context-parallel part)."""
        if input_ids is not None:
            local = input_ids.shape[1]
        else:
            local = self.decoder.input_tensor.shape[0]
            if self.config.sequence_parallel:
                local *= self.tp_group.size()
        return local * self.cp_group.size()

    def vocab_range(self) -> tuple[int, int]:
        """[start, end) of the vocabulary rows held by this TP rank, padding excluded."""
        per_rank = self.vocab_size // self.tp_group.size()
        start = per_rank * self.tp_group.rank()
        return start, max(start, min(start + per_rank, self.config.vocab_rows))

    def forward(
        self,
        input_ids: torch.Tensor | None,
        sigma: torch.Tensor,
        x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the score network.

        Args:
            input_ids: x_t, int64 [b, s]; needed on the first and last pipeline stages. Under
                context parallelism: this rank's part (``split_for_context_parallel``), as x0.
            sigma: total noise sigma(t), [b], on every stage.
            x0: clean tokens [b, s]. When given (last stage), return the per-token score entropy
                [b, s] (float32) instead of the log-score.

        Returns:
            On the last stage: the log-score [b, s, V_local] for this rank's vocabulary shard
            (float32; padded rows are -inf), or the per-token score entropy when x0 is given.
            On other stages: the hidden states [s, b, h] for the next stage.
        """
        cond = self.conditioning(sigma)
        hidden = self.embedding(input_ids) if self.pre_process else None
        rotary = self.rotary_pos_emb(self._sequence_length(input_ids))
        hidden = self.decoder(
            hidden_states=hidden, attention_mask=None, context=cond, rotary_pos_emb=rotary
        )
        if not self.post_process:
            return hidden

        logits = self.output_layer(hidden, cond)  # [s, b, V/tp]
        if self.config.time_conditioning == "none":
            # log p(y | x_t): the shift below adds -log(e^sigma - 1).
            logits = logits.float()
            logits = logits - self._data_logsumexp(logits)[..., None]
        if x0 is None:
            return self._postprocess(logits.float(), input_ids, sigma, padding=float("-inf"))
        # The loss: the fused op applies _postprocess's shift / 0 at x_t / padding itself and
        # may overwrite the fresh logits (nothing saved them) with its buffer or their gradient.
        start, end = self.vocab_range()
        return vocab_parallel_score_entropy_from_logits(
            self.config.graph,
            self.config.num_tokens,
            logits,
            sigma,
            input_ids,
            x0,
            vocab_offset=start,
            num_valid=end - start,
            tp_group=self.tp_group,
            shift=self._score_shift(sigma),
            inplace=True,
            use_triton=None if self.config.fused_kernels else False,
        )

    def _score_shift(self, sigma: torch.Tensor) -> torch.Tensor | None:
        """[b] float32 log(e^sigma - 1) + log(V' - 1) subtracted from the logits when
        ``scale_by_sigma`` (log-score = logits - shift), else None. Time-independent models:
        log(e^sigma - 1) alone (their logits are already log-normalised over the data tokens)."""
        if not self.config.scale_by_sigma:
            return None
        log_expm1 = score_log_expm1(sigma.float())
        if self.config.time_conditioning == "none":
            return log_expm1
        return log_expm1 + math.log(self.config.vocab_rows - 1)

    def _postprocess(self, logits, x_t, sigma, padding: float) -> torch.Tensor:
        """sigma-scaling (absorb), log-score 0 at the current token, ``padding`` on padded rows
        (-inf for callers). The loss (``x0=``) does the same fused, without this function.

        Works in place on the fresh [s, b, V/tp] output-layer activations (none of these ops'
        backward needs them; in-place on a view would make autograd copy the whole tensor) and
        returns the [b, s, V/tp] view.
        """
        start, end = self.vocab_range()
        shift = self._score_shift(sigma)
        if shift is not None:
            logits.sub_(shift[None, :, None])
        # The log-score at the current token is exactly 0 (where that token is in this shard).
        local = x_t.t() - start
        here = ((local >= 0) & (local < end - start))[..., None]
        index = local.clamp(0, logits.shape[-1] - 1)[..., None]
        current = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        logits.masked_fill_(current.scatter_(-1, index, here), 0.0)
        if end - start < logits.shape[-1]:
            padded = torch.arange(logits.shape[-1], device=logits.device) >= end - start
            logits.masked_fill_(padded, padding)
        return logits.transpose(0, 1)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        # LanguageModule's version handles GPT's tied output weights, which SEDD does not have.
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        sharded = MegatronModule.sharded_state_dict(self, prefix, sharded_offsets, metadata)
        # Megatron pads the vocabulary to a multiple that depends on TP: let checkpoints reshard.
        for key in ("output_layer.linear.weight", "output_layer.linear.bias"):
            if self.post_process and f"{prefix}{key}" in sharded:
                sharded[f"{prefix}{key}"].allow_shape_mismatch = True
        # Every pipeline stage (and virtual stage) holds the noise-level embedder: only the
        # first one is the main replica, the others are marked as copies.
        copy_index = self.pp_group.rank() + self.pp_group.size() * (self.vp_stage or 0)
        for key, value in sharded.items():
            conditioning = key.startswith((f"{prefix}sigma_map.", f"{prefix}cond_map."))
            if conditioning and hasattr(value, "replica_id"):
                replica = value.replica_id
                replica = (copy_index, *replica[1:]) if isinstance(replica, tuple) else copy_index
                value.replica_id = replica
        return sharded


def conditioning_parameters(model: "SEDDModel") -> list[torch.Tensor]:
    """The parameters of the noise-level conditioning (``sigma_map`` or ``cond_map``), which
    every pipeline stage and virtual stage holds a copy of."""
    for name in ("sigma_map", "cond_map"):
        module = getattr(model, name, None)
        if module is not None:
            return list(module.parameters())
    return []


@torch.no_grad()
def sync_conditioning(model: "SEDDModel", source: "SEDDModel | None" = None) -> None:
    """Give every copy of the conditioning the same initial values.

    Each pipeline stage initialises its copy from its own generator (Megatron seeds each stage
    differently), and gradients are summed across the copies, so copies that start apart stay
    apart: later stages would condition on another embedding than the first, and a checkpoint,
    which keeps one copy, would resume a different model. With ``source`` (another chunk of this
    rank, already synced), the values are copied from it; otherwise they are broadcast from the
    first pipeline stage (a collective over the pipeline group). Call it on a freshly built model,
    before any training step.
    """
    params = conditioning_parameters(model)
    if source is not None:
        for param, value in zip(params, conditioning_parameters(source), strict=True):
            param.copy_(value)
        return
    group = model.pp_group
    if group.size() == 1:
        return
    on_gpu = torch.distributed.get_backend(group) == "nccl"
    device = torch.device(torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    for param in params:
        buffer = param.detach().to(device)  # NCCL needs the values on the GPU
        torch.distributed.broadcast(buffer, group=group, group_src=0)
        param.copy_(buffer)


def padded_vocab_size(vocab_rows: int, tensor_parallel_size: int, divisible_by: int = 128) -> int:
    """Megatron's vocabulary padding: round up to a multiple of divisible_by * TP."""
    multiple = divisible_by * tensor_parallel_size
    return -(-vocab_rows // multiple) * multiple
