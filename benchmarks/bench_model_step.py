"""Training-step time of SEDDModel vs a Megatron GPTModel of the same size vs the plain twin.

What is measured: wall time of one training step = forward + loss + backward (no optimizer
step; gradients are reset to None before every step, outside the timed region), in float32 on
CPU, one process (a one-rank gloo world; Megatron runs through ``enable_cpu_megatron``, whose
device-mapping torch-function mode is active for every variant, the plain twin included).

Variants, all with the same hidden size, layers, heads, FFN = 4H, GELU(tanh), sequence length,
batch, vocabulary (padded to a multiple of 128 for the Megatron models) and dropout:

- ``sedd``: SEDDModel (local spec) with its vocab-parallel score-entropy loss (``x0=`` forward).
- ``gpt``: GPTModel with ``get_gpt_layer_local_spec()``, rope, untied output layer, Megatron's
  vocab-parallel cross entropy (``labels=`` forward). Like SEDD: no bias on qkv/proj, LayerNorm
  eps 1e-5, attention dropout 0. Unlike SEDD: no bias on the MLP (Megatron's add_bias_linear is
  global), LayerNorms with bias, no adaLN (no conditioning), causal attention computed by
  DotProductAttention (baddbmm + masked softmax + bmm, the [b, h, s, s] scores materialised)
  instead of SEDD's fused ``scaled_dot_product_attention``, no output-layer bias.
- ``gpt-sdpa``: the same GPTModel with SEDD's core attention (``BidirectionalAttention``, no
  mask), which isolates the attention kernel from the rest.
- ``sedd-ce``: the same SEDDModel modules (sigma map, embedding, decoder, output layer) with
  Megatron's vocab-parallel cross entropy on the output-layer logits instead of the log-score
  post-processing and score entropy: ``sedd`` / ``sedd-ce`` is the cost of the SEDD loss head,
  ``sedd-ce`` / ``gpt`` the cost of the rest (adaLN, MLP and output biases, conditioning).
- ``plain``: ``sedd_megatron.plain.SEDD`` (same weights as ``sedd``) with the full-vocabulary
  ``graph.score_entropy``.

Steps run in interleaved order (the variant order rotates every repetition) after warm-up; the
table reports the median (and min) wall time and the median process CPU time. Ratios are
against baselines timed in the same run. The default is one torch thread: then the process CPU
time of a step is its compute time even when other jobs share the machine (on a loaded machine
multi-threaded wall times are dominated by threads waiting for descheduled peers), so the
target check uses CPU-time ratios; pass ``--threads N`` on an idle machine to time wall clock.

    python benchmarks/bench_model_step.py --config tiny
    python benchmarks/bench_model_step.py --config small --profile
"""

import argparse
import os
import shlex
import statistics
import sys
import time

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU benchmark, also on a machine with GPUs

import torch  # noqa: E402

from sedd_megatron.diffusion import (  # noqa: E402
    GRAPHS,
    get_graph,
    get_noise,
    graph_class,
    sample_t,
)
from sedd_megatron.plain import SEDD, SEDDConfig  # noqa: E402
from sedd_megatron.runtime import world  # noqa: E402

CONFIGS = {
    # name: hidden, layers, heads, seq_len, batch
    "smoke": dict(hidden=64, layers=2, heads=2, seq_len=32, batch=2),
    "tiny": dict(hidden=128, layers=4, heads=4, seq_len=128, batch=4),
    "small": dict(hidden=256, layers=6, heads=8, seq_len=256, batch=4),
}
VARIANTS = ("sedd", "sedd-ce", "gpt", "gpt-sdpa", "plain")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=CONFIGS, default="tiny")
    parser.add_argument("--vocab", type=int, default=50257, help="data tokens (GPT-2: 50257)")
    parser.add_argument("--graph", choices=tuple(GRAPHS), default="absorb")
    parser.add_argument("--cond-dim", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.1, help="hidden dropout (all models)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see docstring)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--profile", action="store_true", help="torch.profiler op breakdown")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1234)
    for key in CONFIGS["tiny"]:
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            type=int,
            default=None,
            help=f"override the config's {key}",
        )
    args = parser.parse_args(argv)
    size = dict(CONFIGS[args.config])
    size.update({k: getattr(args, k) for k in size if getattr(args, k) is not None})
    args.size = size
    return args


def build_inputs(args):
    """x0, sigma, dsigma, x_t: one fixed random batch reused by every step."""
    size = args.size
    gen = torch.Generator().manual_seed(args.seed)
    graph = get_graph(args.graph, args.vocab)
    noise = get_noise(graph.default_noise)
    x0 = torch.randint(0, args.vocab, (size["batch"], size["seq_len"]), generator=gen)
    sigma, dsigma = noise(sample_t(size["batch"], generator=gen))
    x_t = graph.sample_transition(x0, sigma[:, None], generator=gen)
    return graph, x0, sigma, dsigma, x_t


def common_config_kwargs(args) -> dict:
    size = args.size
    return dict(
        num_layers=size["layers"],
        hidden_size=size["hidden"],
        num_attention_heads=size["heads"],
        ffn_hidden_size=4 * size["hidden"],
        kv_channels=size["hidden"] // size["heads"],
        hidden_dropout=args.dropout,
        attention_dropout=0.0,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
    )


def build_plain(args):
    size = args.size
    config = SEDDConfig(
        tokens=args.vocab,
        graph=args.graph,
        hidden_size=size["hidden"],
        cond_dim=args.cond_dim,
        length=size["seq_len"],
        n_blocks=size["layers"],
        n_heads=size["heads"],
        scale_by_sigma=graph_class(args.graph).sigma_scaling,
        dropout=args.dropout,
    )
    return SEDD(config).train()


def build_sedd(args, plain):
    from sedd_megatron.models.sedd import (  # lazy: imports megatron
        SEDDModel,
        SEDDTransformerConfig,
        get_sedd_layer_spec,
        padded_vocab_size,
    )
    from sedd_megatron.models.sedd.state_dict_adapter import (  # lazy: imports megatron
        load_reference_state_dict,
    )

    config = SEDDTransformerConfig(
        **common_config_kwargs(args),
        graph=args.graph,
        num_tokens=args.vocab,
        cond_dim=args.cond_dim,
        scale_by_sigma=graph_class(args.graph).sigma_scaling,
    )
    model = SEDDModel(
        config,
        get_sedd_layer_spec(use_transformer_engine=False),
        vocab_size=padded_vocab_size(config.vocab_rows, 1),
        max_sequence_length=args.size["seq_len"],
    )
    load_reference_state_dict(model, plain.state_dict())  # the same function as the plain twin
    return model.train()


def build_gpt(args, sdpa: bool):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from sedd_megatron.models.sedd import padded_vocab_size  # lazy: imports megatron
    from sedd_megatron.models.sedd.sedd_config import gelu_tanh  # lazy: imports megatron
    from sedd_megatron.models.sedd.sedd_layers import (  # lazy: imports megatron
        BidirectionalAttention,
    )

    config = TransformerConfig(
        **common_config_kwargs(args),
        add_bias_linear=False,
        add_qkv_bias=False,
        activation_func=gelu_tanh,
        normalization="LayerNorm",
        layernorm_epsilon=1e-5,
        bias_dropout_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
    )
    spec = get_gpt_layer_local_spec()
    if sdpa:
        attention = spec.submodules.self_attention
        attention.submodules.core_attention = BidirectionalAttention
        attention.params = {**attention.params, "attn_mask_type": AttnMaskType.no_mask}
    model = GPTModel(
        config,
        spec,
        vocab_size=padded_vocab_size(args.vocab, 1),
        max_sequence_length=args.size["seq_len"],
        position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
    )
    return model.train()


def make_steps(args):
    """{variant: (model, step function returning the loss after backward)}."""
    graph, x0, sigma, dsigma, x_t = build_inputs(args)
    positions = torch.arange(x0.shape[1])[None].expand_as(x0)
    plain = build_plain(args)

    def sedd_step(model):
        per_token = model(x_t, sigma, x0=x0)
        loss = (dsigma[:, None] * per_token).sum(-1).mean()
        loss.backward()
        return loss

    def sedd_ce_step(model):
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        cond = model.sigma_map(sigma)
        rotary = model.rotary_pos_emb(x_t.shape[1])
        hidden = model.decoder(
            hidden_states=model.embedding(x_t),
            attention_mask=None,
            context=cond,
            rotary_pos_emb=rotary,
        )
        logits = model.output_layer(hidden, cond).float()  # [s, b, V]
        per_token = vocab_parallel_cross_entropy(logits, x0.t().contiguous()).t()
        loss = per_token.sum(-1).mean()
        loss.backward()
        return loss

    def gpt_step(model):
        per_token = model(x0, positions, None, labels=x0)
        loss = per_token.sum(-1).mean()
        loss.backward()
        return loss

    def plain_step(model):
        per_token = graph.score_entropy(model(x_t, sigma), sigma[:, None], x_t, x0)
        loss = (dsigma[:, None] * per_token).sum(-1).mean()
        loss.backward()
        return loss

    builders = {
        "sedd": lambda: (build_sedd(args, plain), sedd_step),
        "sedd-ce": lambda: (build_sedd(args, plain), sedd_ce_step),
        "gpt": lambda: (build_gpt(args, sdpa=False), gpt_step),
        "gpt-sdpa": lambda: (build_gpt(args, sdpa=True), gpt_step),
        "plain": lambda: (plain, plain_step),
    }
    return {name: builders[name]() for name in args.variants}


def timed_step(model, step) -> tuple[float, float, float]:
    """(wall seconds, process CPU seconds, loss) of one step."""
    model.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), time.process_time()
    loss = step(model)
    return time.perf_counter() - wall, time.process_time() - cpu, loss.item()


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def profile(steps, rows: int) -> None:
    """Per-op self-CPU-time breakdown of one step of every variant."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, (model, step) in steps.items():
        model.zero_grad(set_to_none=True)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step(model)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        print(f"\n### profile: {name} (one step, ops by self CPU time)\n{table}")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with world(tp=1, pp=1, seed=args.seed):
        steps = make_steps(args)
        names = list(steps)
        wall, cpu, losses = {n: [] for n in names}, {n: [] for n in names}, {}
        for _ in range(args.warmup):
            for name in names:
                timed_step(*steps[name])
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                elapsed, used, losses[name] = timed_step(*steps[name])
                wall[name].append(elapsed * 1e3)
                cpu[name].append(used * 1e3)

        size = args.size
        tokens = size["batch"] * size["seq_len"]
        print(
            f"\nbench_model_step: config={args.config} {size} vocab={args.vocab} "
            f"graph={args.graph} "
            f"cond_dim={args.cond_dim} dropout={args.dropout} fp32 CPU threads="
            f"{torch.get_num_threads()} warmup={args.warmup} reps={args.reps}"
        )
        header = ("variant", "params", "wall med ms", "wall min ms", "cpu med ms", "tok/s", "loss")
        print("{:<9} {:>11} {:>12} {:>12} {:>11} {:>8} {:>11}".format(*header))
        med_wall = {n: statistics.median(wall[n]) for n in names}
        med_cpu = {n: statistics.median(cpu[n]) for n in names}
        for n in names:
            print(
                f"{n:<9} {count_params(steps[n][0]):>11,} {med_wall[n]:>12.1f} "
                f"{min(wall[n]):>12.1f} "
                f"{med_cpu[n]:>11.1f} {tokens / med_wall[n] * 1e3:>8.0f} {losses[n]:>11.4f}"
            )
        for base in ("gpt", "gpt-sdpa", "sedd-ce", "plain"):
            if "sedd" in names and base in names:
                print(
                    f"ratio SEDD/{base}: wall median {med_wall['sedd'] / med_wall[base]:.3f}  "
                    f"wall min {min(wall['sedd']) / min(wall[base]):.3f}  "
                    f"cpu median {med_cpu['sedd'] / med_cpu[base]:.3f}"
                )
        if "sedd" in names and "gpt" in names:
            ratio = med_cpu["sedd"] / med_cpu["gpt"]
            print(f"target SEDD/gpt <= 1.05 (cpu median): {'OK' if ratio <= 1.05 else 'ABOVE'}")
        script = os.path.relpath(__file__)
        print("command: " + shlex.join([os.path.basename(sys.executable), script, *sys.argv[1:]]))
        if args.profile:
            profile(steps, args.profile_rows)


if __name__ == "__main__":
    main()
