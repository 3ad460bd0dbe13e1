"""Worker: SEDDModel at a given TP/PP/SP layout vs the plain-PyTorch reference twin.

Every rank builds the plain twin from a conformance model (the reference computation, in
float32 on CPU), loads the same weights into a Megatron SEDDModel through the state-dict adapter,
runs one forward/backward through Megatron's pipeline schedule and finalize_model_grads, and
compares log-scores, per-sequence losses and every gradient (gathered to the reference layout)
with the twin's; it also checks the reference's recorded outputs (conformance vectors) and that
reference -> Megatron -> reference is bit-identical. Rank 0 prints ``RESULT {json}`` with the
largest relative errors over all ranks.

    torchrun --nproc_per_node=N parallel_equivalence.py MODEL_DIR --tp T --pp P [--sp]

With ``--time-independent`` the twin is the model's time-independent variant
(time_conditioning "none": the conformance weights without sigma_map, plus a random constant
conditioning vector ``cond``); the reference's recorded outputs do not apply to it.

With ``--variant NAME`` the twin has one of the backbone variants of :data:`VARIANTS` (the
conformance config with those fields replaced) and seeded random weights (every parameter,
the zero-initialised adaLN and output projections included); the recorded outputs do not apply.
"""

import argparse
import json
from pathlib import Path

import torch

# Backbone variants (plain.SEDDConfig fields) for the tiny conformance model (hidden 64, 4 heads).
VARIANTS = {
    # any MLP width, a head dim other than hidden / heads, another rotary base and norm epsilon
    "dims": dict(ffn_hidden_size=96, kv_channels=24, rotary_base=500000.0, norm_eps=1e-6),
    # RMSNorm, SwiGLU, grouped-query attention (2 key/value heads), QK norm
    "llama": dict(norm="rmsnorm", mlp="swiglu", ffn_hidden_size=128, n_kv_heads=2, qk_norm=True),
}


def randomise(model: torch.nn.Module, seed: int = 7) -> None:
    """Seeded random values for every parameter: norm weights near 1, the rest N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            is_norm = "norm" in name and param.ndim == 1
            param.copy_(1.0 + 0.1 * noise if is_norm else 0.1 * noise)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().clamp_min(1e-12)
    return ((a - b).abs().max() / scale).item()


def run_pipeline(ddp, x_t, sigma, x0=None, dsigma=None, forward_only=True):
    """One micro-batch through Megatron's schedule; returns the last stage's model output for
    the whole sequence (context-parallel parts are split off here and merged back)."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from sedd_megatron.models.sedd.context_parallel import (
        merge_from_context_parallel,
        split_for_context_parallel,
    )

    cp_size, cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
    local_x_t = split_for_context_parallel(x_t, cp_rank, cp_size)
    local_x0 = None if x0 is None else split_for_context_parallel(x0, cp_rank, cp_size)
    captured = {}

    def loss_func(output):
        captured["output"] = output.detach()
        if dsigma is None:
            return output.sum() * 0, {}
        # Each CP rank holds part of every sequence: Megatron's DDP sums the partial gradients
        # over the context-parallel ranks (it divides by the data-parallel size only).
        loss = (dsigma[:, None] * output).sum(-1)
        return loss.mean(), {}

    def forward_step(data_iterator, model_chunk):
        next(data_iterator)
        return model_chunk(local_x_t, sigma, x0=local_x0), loss_func

    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None]),
        model=[ddp],
        num_microbatches=1,
        seq_length=local_x_t.shape[1],
        micro_batch_size=x_t.shape[0],
        forward_only=forward_only,
    )
    output = captured.get("output")
    if output is None or cp_size == 1:
        return output
    parts = [torch.empty_like(output) for _ in range(cp_size)]
    torch.distributed.all_gather(parts, output.contiguous(), group=ps.get_context_parallel_group())
    return merge_from_context_parallel(parts, dim=1)


def gather_vocab(model, shard):
    """Full-vocabulary log-scores from this rank's shard (padding dropped)."""
    from megatron.core import parallel_state

    start, end = model.vocab_range()
    parts = [None] * parallel_state.get_tensor_model_parallel_world_size()
    torch.distributed.all_gather_object(
        parts, shard[..., : end - start], group=parallel_state.get_tensor_model_parallel_group()
    )
    return torch.cat(parts, dim=-1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--sp", action="store_true")
    parser.add_argument("--cp", type=int, default=1)
    parser.add_argument("--time-independent", action="store_true")
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)

    from sedd_megatron.runtime import CPU_PIPELINE_CONFIG, world

    with world(tp=args.tp, pp=args.pp, cp=args.cp, seed=1234):
        from megatron.core import parallel_state
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads
        from safetensors.torch import load_file

        from sedd_megatron.diffusion import get_graph
        from sedd_megatron.models.sedd import (
            SEDDModel,
            SEDDTransformerConfig,
            get_sedd_layer_spec,
            padded_vocab_size,
        )
        from sedd_megatron.models.sedd import state_dict_adapter as adapter
        from sedd_megatron.plain import SEDD

        plain = SEDD.from_pretrained(args.model_dir)
        if args.time_independent:
            import dataclasses

            weights = {k: v for k, v in plain.state_dict().items() if "sigma_map" not in k}
            weights["cond_map.cond"] = torch.randn(
                plain.config.cond_dim, generator=torch.Generator().manual_seed(5)
            )
            plain = SEDD(dataclasses.replace(plain.config, time_conditioning="none"))
            plain.load_state_dict(weights, strict=True)
        if args.variant:
            import dataclasses

            plain = SEDD(dataclasses.replace(plain.config, **VARIANTS[args.variant]))
            randomise(plain)
        published = plain.config
        graph = get_graph(published.graph, published.tokens)
        batch, length = 2, 16
        gen = torch.Generator().manual_seed(0)
        x0 = torch.randint(0, published.tokens, (batch, length), generator=gen)
        sigma = torch.tensor([0.3, 1.7])
        dsigma = torch.tensor([1.1, 2.5])
        x_t = graph.sample_transition(x0, sigma[:, None], generator=gen)

        # Reference: the plain twin in train mode with dropout 0 (deterministic).
        plain.train()
        for block in plain.blocks:
            block.dropout = 0.0
        ref_log_score = plain(x_t, sigma)
        se = graph.score_entropy(ref_log_score, sigma[:, None], x_t, x0)
        ref_loss = (dsigma[:, None] * se).sum(-1)
        ref_loss.mean().backward()
        ref_grads = {n: p.grad for n, p in plain.named_parameters()}

        kwargs = adapter.transformer_config_kwargs(published)
        kwargs.update(hidden_dropout=0.0)
        config = SEDDTransformerConfig(
            **kwargs,
            tensor_model_parallel_size=args.tp,
            pipeline_model_parallel_size=args.pp,
            sequence_parallel=args.sp,
            context_parallel_size=args.cp,
            use_cpu_initialization=True,
            pipeline_dtype=torch.float32,
            **CPU_PIPELINE_CONFIG,
        )
        model = SEDDModel(
            config,
            get_sedd_layer_spec(use_transformer_engine=False, qk_layernorm=config.qk_layernorm),
            vocab_size=padded_vocab_size(config.vocab_rows, args.tp),
            max_sequence_length=length,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
        )
        reference = plain.state_dict()
        adapter.load_reference_state_dict(model, reference)
        round_trip = adapter.reference_state_dict(model)
        bit_identical = list(round_trip) == list(reference) and all(
            torch.equal(round_trip[k], reference[k]) for k in reference
        )

        ddp = DistributedDataParallel(
            config, DistributedDataParallelConfig(use_distributed_optimizer=False), model
        )
        config.finalize_model_grads_func = finalize_model_grads
        ddp.zero_grad_buffer()
        per_token = run_pipeline(ddp, x_t, sigma, x0=x0, dsigma=dsigma, forward_only=False)
        grads = adapter.reference_grads(model)

        ddp.eval()
        last = parallel_state.is_pipeline_last_stage()
        from sedd_megatron.kernels import triton_usable

        result = {"bit_identical_round_trip": bit_identical, "triton_kernels": triton_usable(x0)}
        shard = run_pipeline(ddp, x_t, sigma)
        if last:
            loss = (dsigma[:, None] * per_token).sum(-1)
            result["loss"] = relative_error(loss, ref_loss.detach())
            result["log_score"] = relative_error(gather_vocab(model, shard), ref_log_score.detach())

        # The reference's own recorded outputs on its recorded inputs.
        recorded = not (args.time_independent or args.variant)
        for name in ("expected_euler", "expected_analytic") if recorded else ():
            expected = load_file(Path(args.model_dir) / f"{name}.safetensors")
            x_t, sigma, x0 = expected["perturbed"], expected["sigma"], expected["tokens"]
            shard = run_pipeline(ddp, x_t, sigma)
            per_token = run_pipeline(ddp, x_t, sigma, x0=x0)
            if last:
                log_score = gather_vocab(model, shard)
                loss = (expected["dsigma"][:, None] * per_token).sum(-1)
                result[f"conformance_log_score_{name}"] = relative_error(
                    log_score, expected["log_score"]
                )
                result[f"conformance_loss_{name}"] = relative_error(loss, expected["loss"])

        grad_errors = {k: relative_error(grads[k], ref_grads[k]) for k in ref_grads}
        result["grad_max"] = max(grad_errors.values())
        result["grad_worst"] = max(grad_errors, key=grad_errors.get)
        result["grad_bad"] = sorted(k for k, v in grad_errors.items() if v > 1e-5)
        result["grads_checked"] = len(grad_errors)
        result["plain_parameters"] = len(ref_grads)

        everything = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everything, result)
        if torch.distributed.get_rank() == 0:
            merged = {}
            for part in everything:
                for key, value in part.items():
                    if isinstance(value, bool):
                        merged[key] = merged.get(key, True) and value
                    elif isinstance(value, float):
                        merged[key] = max(merged.get(key, 0.0), value)
                    else:
                        merged.setdefault(key, value)
            print("RESULT " + json.dumps(merged), flush=True)


if __name__ == "__main__":
    main()
