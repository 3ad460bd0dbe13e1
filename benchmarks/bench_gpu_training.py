"""Training throughput (tokens/s) and MFU of SEDD-small on one GPU through Megatron-Core.

What is measured: wall time of full training steps (forward + vocab-parallel score-entropy loss +
backward through Megatron's no-pipelining schedule, ``finalize_model_grads``, and the optimizer
step) after warm-up, on synthetic uniformly random tokens, CUDA-synchronised at both ends.

Training path: parameters in bf16 (``params_dtype=bf16``, ``bf16=True``), Megatron
``DistributedDataParallel`` with fp32 gradient buffers, and Megatron's mixed-precision optimizer
(``get_megatron_optimizer``: Adam with fp32 master weights, gradient clipping 1.0), i.e. what
``pretrain_sedd.py --bf16`` runs, without the ``Float16Module`` wrapper (the model is built in
bf16; sigma is passed by keyword and stays fp32). The Transformer Engine layer spec is used when
TE imports, else the local spec (``--local-spec`` forces it).

MFU = tokens/s * F / peak, with F the model FLOPs of one training token (forward + backward =
3 x forward, matmuls only, PaLM-style):

    F = 6 * (L * P + H * V') + 12 * L * S * A

L layers, hidden H, sequence length S, V' = vocabulary rows (50258 for absorb, unpadded), A the
attention width (heads x head dim; H for the DiT). P the matmul weights of one layer: qkv
H * (heads + 2 G) * D, attention output A * H, MLP 2 H F (tanh-GELU) or 3 H F (SwiGLU), with G
key/value heads and MLP width F; for the DiT (G = heads, F = 4H) P = 12 H^2. H * V': the output
layer; 12 L S A: QK^T and AV of bidirectional (unmasked) attention. Not counted: embedding
lookup, the adaLN projections (per sequence, 6 * cond_dim * 6H / S per token), norms,
element-wise ops, the loss. ``--peak-tflops`` defaults to 989 (H100/H200 SXM dense bf16).

``--backbone llama`` swaps the DiT's blocks for configs/sedd_small_llama_absorb.yaml's (RMSNorm,
SwiGLU at Megatron's 8/3 x H width, ``--query-groups`` key/value heads, QK norm; give
``--layers 13`` for that config's size), so both are measured on one GPU in one run.

    python benchmarks/bench_gpu_training.py            # SEDD-small, absorb, micro-batch 16
    python benchmarks/bench_gpu_training.py --backbone llama --layers 13
    python benchmarks/bench_gpu_training.py --micro-batch 8 --steps 30 --local-spec

Without CUDA it prints a message and exits 0 (``--cpu`` runs the same loop on CPU with tiny
sizes as a code-path check; its numbers mean nothing).
"""

import argparse
import os
import shlex
import sys
import time

import torch

from sedd_megatron.diffusion import GRAPHS, get_graph, get_noise, graph_class, sample_t
from sedd_megatron.plain import SEDDConfig
from sedd_megatron.runtime import world

NO_CUDA_MESSAGE = (
    "bench_gpu_training: CUDA is not available; this benchmark needs one GPU. Skipped."
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--cond-dim", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--graph", choices=tuple(GRAPHS), default="absorb")
    parser.add_argument(
        "--backbone",
        choices=("dit", "llama"),
        default="dit",
        help="dit: the reference blocks; llama: RMSNorm, SwiGLU, grouped-query attention, QK norm",
    )
    parser.add_argument("--query-groups", type=int, default=4, help="--backbone llama: kv heads")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="peak dense bf16 TFLOP/s of the GPU (H100/H200 SXM: 989)",
    )
    parser.add_argument("--local-spec", action="store_true", help="never use Transformer Engine")
    parser.add_argument(
        "--no-fused-kernels",
        dest="fused_kernels",
        action="store_false",
        help="the unfused torch path for the layers' element-wise work and the loss",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the timed steps, profile 3 steps and print the top operators by CUDA time",
    )
    parser.add_argument("--cpu", action="store_true", help="code-path check on CPU (fp32)")
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args(argv)


def published_config(args) -> SEDDConfig:
    """The benchmarked model as a published-layout config (what the tools build models from)."""
    backbone = {}
    if args.backbone == "llama":
        backbone = dict(
            norm="rmsnorm",
            mlp="swiglu",
            ffn_hidden_size=int(4 * args.hidden * 2 / 3) // 64 * 64,  # Megatron's --swiglu rule
            n_kv_heads=args.query_groups,
            qk_norm=True,
        )
    return SEDDConfig(
        tokens=args.vocab,
        graph=args.graph,
        hidden_size=args.hidden,
        cond_dim=args.cond_dim,
        length=args.seq_len,
        n_blocks=args.layers,
        n_heads=args.heads,
        scale_by_sigma=graph_class(args.graph).sigma_scaling,
        **backbone,
    )


def flops_per_token(config: SEDDConfig) -> float:
    """Model FLOPs of one training token (module docstring)."""
    H, L, S, F = config.hidden_size, config.n_blocks, config.length, config.ffn_width
    D, heads, groups = config.head_dim, config.n_heads, config.kv_heads
    attention = heads * D
    mlp = (3 if config.mlp == "swiglu" else 2) * H * F
    per_layer = H * (heads + 2 * groups) * D + attention * H + mlp
    return 6 * (L * per_layer + H * config.vocab_rows) + 12 * L * S * attention


def build(args, dtype, use_te: bool | None):
    """SEDDModel wrapped in Megatron DDP, and Megatron's mixed-precision optimizer."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from sedd_megatron.models.sedd import (  # lazy: imports megatron
        SEDDModel,
        SEDDTransformerConfig,
        get_sedd_layer_spec,
        padded_vocab_size,
    )
    from sedd_megatron.models.sedd.state_dict_adapter import (  # lazy: imports megatron
        transformer_config_kwargs,
    )

    config = SEDDTransformerConfig(
        **transformer_config_kwargs(published_config(args)),
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        use_cpu_initialization=args.cpu,
        fused_kernels=args.fused_kernels,
    )
    spec = get_sedd_layer_spec(
        use_transformer_engine=bool(use_te), qk_layernorm=config.qk_layernorm
    )
    model = SEDDModel(
        config,
        spec,
        vocab_size=padded_vocab_size(config.vocab_rows, 1),
        max_sequence_length=args.seq_len,
    )
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True)
    ddp = DistributedDataParallel(config, ddp_config, model)
    config.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=args.lr,
            weight_decay=0.0,
            adam_beta1=0.9,
            adam_beta2=0.999,
            clip_grad=1.0,
            bf16=dtype == torch.bfloat16,
            params_dtype=dtype,
        ),
        [ddp],
    )
    return ddp, optimizer


def make_train_step(args, ddp, optimizer, device):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    graph = get_graph(args.graph, args.vocab)
    noise = get_noise(graph.default_noise)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    forward_backward = get_forward_backward_func()

    def batches():
        while True:
            x0 = torch.randint(
                0, args.vocab, (args.micro_batch, args.seq_len), device=device, generator=gen
            )
            sigma, dsigma = noise(sample_t(args.micro_batch, device=device, generator=gen))
            yield x0, graph.sample_transition(x0, sigma[:, None], generator=gen), sigma, dsigma

    data = batches()

    def forward_step(data_iterator, model):
        x0, x_t, sigma, dsigma = next(data_iterator)
        per_token = model(x_t, sigma=sigma, x0=x0)

        def loss_func(output):
            loss = (dsigma[:, None] * output).sum(-1).mean()
            return loss, {"loss": loss.detach()}

        return per_token, loss_func

    def train_step():
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        losses = forward_backward(
            forward_step_func=forward_step,
            data_iterator=data,
            model=[ddp],
            num_microbatches=args.grad_accum,
            seq_length=args.seq_len,
            micro_batch_size=args.micro_batch,
            forward_only=False,
        )
        success, grad_norm, _ = optimizer.step()
        return losses[-1]["loss"], grad_norm, success

    return train_step


def profile(train_step, sync, device, steps: int = 3) -> None:
    """Per-step CPU vs device time (a step whose CPU time exceeds its device time is
    launch-bound) and the operators with the most device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            train_step()
        sync()
    events = prof.key_averages()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
    cpu_us = sum(e.self_cpu_time_total for e in events)
    print(
        f"\nprofile of {steps} steps: device time {device_us / steps / 1e3:.1f} ms/step, "
        f"CPU time {cpu_us / steps / 1e3:.1f} ms/step"
    )
    print(events.table(sort_by=sort, row_limit=25))


def main(argv=None):
    args = parse_args(argv)
    if args.cpu:
        args.hidden, args.layers, args.heads, args.seq_len = 64, 2, 4, 32
        args.query_groups = 2
        args.micro_batch, args.vocab, args.warmup, args.steps = 2, 1000, 1, 2
    elif not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE)
        return 0
    with world(tp=1, pp=1, seed=args.seed):
        device = (
            torch.device("cpu") if args.cpu else torch.device("cuda", torch.cuda.current_device())
        )
        dtype = torch.float32 if args.cpu else torch.bfloat16
        from megatron.core.extensions.transformer_engine import HAVE_TE

        use_te = HAVE_TE and not args.local_spec and not args.cpu
        ddp, optimizer = build(args, dtype, use_te)
        train_step = make_train_step(args, ddp, optimizer, device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        for _ in range(args.warmup):
            train_step()
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            loss, grad_norm, success = train_step()
        sync()
        elapsed = time.perf_counter() - start

        tokens = args.steps * args.grad_accum * args.micro_batch * args.seq_len
        tokens_per_s = tokens / elapsed
        flops = flops_per_token(published_config(args))
        mfu = tokens_per_s * flops / (args.peak_tflops * 1e12)
        params = sum(p.numel() for p in ddp.module.parameters())
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (code-path check)"
        peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
        spec = "TE" if use_te else "local"
        fused = "fused kernels" if args.fused_kernels else "unfused"
        print(
            f"\nbench_gpu_training: {name}, {spec} spec, {fused}, {dtype}, "
            f"params {params / 1e6:.1f}M, "
            f"H={args.hidden} L={args.layers} heads={args.heads} S={args.seq_len} "
            f"micro-batch={args.micro_batch} x {args.grad_accum} graph={args.graph} "
            f"backbone={args.backbone}"
        )
        header = (
            "steps",
            "s/step",
            "tokens/s",
            "GFLOP/token",
            "TFLOP/s",
            "MFU",
            "loss",
            "grad norm",
        )
        print(
            "{:>6} {:>8} {:>10} {:>12} {:>8} {:>7} {:>10} {:>10} {:>8}".format(*header, "peak GB")
        )
        row = [
            f"{args.steps:>6}",
            f"{elapsed / args.steps:>8.3f}",
            f"{tokens_per_s:>10.0f}",
            f"{flops / 1e9:>12.3f}",
            f"{tokens_per_s * flops / 1e12:>8.1f}",
            f"{mfu:>7.1%}",
            f"{loss.item():>10.4f}",
            f"{float(grad_norm):>10.4f}",
            f"{peak_gb:>8.1f}",
        ]
        print(" ".join(row))
        print(
            f"MFU against --peak-tflops {args.peak_tflops:g}; all steps succeeded: {bool(success)}"
        )
        script = os.path.relpath(os.path.abspath(__file__))
        print("command: " + shlex.join(["python", script, *sys.argv[1:]]))
        if args.profile:
            profile(train_step, sync, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
