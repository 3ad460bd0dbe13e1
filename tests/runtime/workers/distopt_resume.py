"""Worker (torchrun, 2 processes, DP=2): distributed-optimizer checkpoint resume is exact.

Trains a tiny GPT with DDP + Megatron's distributed optimizer (torch AdamW fallback) through
Megatron's pipeline schedule: an uninterrupted run of 2*K steps, then a run of K steps that
saves model and optimizer (``torch_dist``, ``dp_reshardable``), then resumes from that
checkpoint into models built from another seed, K more steps each, under several sets of
``apply_upstream_fixes`` fixes (applied cumulatively, in the order given):

    distopt_resume.py CKPT_DIR K VARIANT [VARIANT ...]

VARIANT is ``none`` or a '+'-joined subset of FIXES, e.g. ``empty_state+no_grad_loader`` or
``all``. For each variant the report holds the resumed losses or the error it raised.
"""

import sys

import torch
from common import BATCH, SEQ, VOCAB, report, start_worker, tiny_config, tiny_gpt

SEED = 1234
SHARDING = {"distrib_optim_sharding_type": "dp_reshardable"}


def build(seed: int):
    """DDP-wrapped tiny GPT and its distributed optimizer, weights from ``seed``."""
    from megatron.core import tensor_parallel
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    config = tiny_config()
    ddp_config = DistributedDataParallelConfig(use_distributed_optimizer=True)
    model = DistributedDataParallel(config, ddp_config, tiny_gpt(config))
    config.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=3e-3,
            weight_decay=0.01,
            clip_grad=1.0,
            use_distributed_optimizer=True,
        ),
        [model],
    )
    return model, optimizer


def batch(step: int) -> dict:
    """The micro-batch of data-parallel rank r at ``step`` (same in every run)."""
    from megatron.core import parallel_state

    gen = torch.Generator().manual_seed(1000 * step + parallel_state.get_data_parallel_rank())
    tokens = torch.randint(VOCAB, (BATCH, SEQ), generator=gen)
    return {"tokens": tokens, "labels": torch.roll(tokens, -1, dims=1)}


def forward_step(data_iterator, model):
    data = next(data_iterator)
    position_ids = torch.arange(SEQ).expand(BATCH, SEQ)
    losses = model(data["tokens"], position_ids, None, labels=data["labels"])

    def loss_func(output):
        loss = output.float().mean()
        averaged = loss.detach().clone()
        torch.distributed.all_reduce(averaged)
        return loss, {"loss": averaged / torch.distributed.get_world_size()}

    return losses, loss_func


def train(model, optimizer, steps: range) -> list[float]:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    losses = []
    for step in steps:
        model.zero_grad_buffer()
        optimizer.zero_grad()
        out = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter([batch(step)]),
            model=[model],
            num_microbatches=1,
            seq_length=SEQ,
            micro_batch_size=BATCH,
        )
        success, _, _ = optimizer.step()
        assert success, f"optimizer step {step} skipped"
        losses.append(out[0]["loss"].item())
    return losses


def sharded_state(model, optimizer, is_loading: bool) -> dict:
    model_state = model.module.sharded_state_dict()
    return {
        "model": model_state,
        "optimizer": optimizer.sharded_state_dict(
            model_state, is_loading=is_loading, metadata=SHARDING
        ),
    }


def resume(ckpt_dir: str, k: int) -> list[float]:
    from megatron.core import dist_checkpointing

    model, optimizer = build(SEED + 1)  # another seed: everything must come from the checkpoint
    state = dist_checkpointing.load(sharded_state(model, optimizer, True), ckpt_dir)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return train(model, optimizer, range(k, 2 * k))


def main():
    start_worker()
    from megatron.core import dist_checkpointing

    from sedd_megatron.runtime import apply_upstream_fixes, world
    from sedd_megatron.runtime.upstream_fixes import FIXES

    ckpt_dir, k, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    with world(seed=SEED):
        reference = train(*build(SEED), range(2 * k))
        model, optimizer = build(SEED)
        first_half = train(model, optimizer, range(k))
        dist_checkpointing.save(sharded_state(model, optimizer, False), ckpt_dir)
        torch.distributed.barrier()

        resumed = {}
        for variant in variants:
            fixes = [] if variant == "none" else FIXES if variant == "all" else variant.split("+")
            apply_upstream_fixes(fixes)
            try:
                resumed[variant] = resume(ckpt_dir, k)
            except Exception as error:  # raised on every rank alike: report it, go on
                resumed[variant] = f"{type(error).__name__}: {error}"
        report(reference=reference, first_half=first_half, resumed=resumed)


if __name__ == "__main__":
    main()
