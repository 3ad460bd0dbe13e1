"""Worker (one process, gloo world of size 1): Megatron-Core basics on CPU.

- a TransformerBlock (local spec) runs forward and backward;
- the RNG tracker forks the CPU generator with Megatron's seeds and restores the outer state;
- a tiny GPTModel's sharded state dict survives a ``torch_dist`` save and load into a model
  initialised from another seed; the save's shard files are hashed while Megatron writes them
  (``checksums.hash_megatron_shard_writes``), as the file's bytes hash.

Usage: single_process.py CHECKPOINT_DIR
"""

import os
import sys

import torch
from common import BATCH, HIDDEN, SEQ, report, start_worker, tiny_block, tiny_config, tiny_gpt


def block_forward_backward() -> dict:
    block = tiny_block(tiny_config())
    x = torch.randn(SEQ, BATCH, HIDDEN, requires_grad=True)
    out = block(x, attention_mask=None)
    out.square().mean().backward()
    grads = [p.grad for p in block.parameters()]
    return {
        "block_output_shape": list(out.shape),
        "block_grads_finite": all(bool(torch.isfinite(g).all()) for g in grads + [x.grad]),
        "block_params_without_grad": sum(g is None or not g.any() for g in grads),
    }


def rng_tracker(seed: int) -> dict:
    from megatron.core import tensor_parallel

    tracker = tensor_parallel.get_cuda_rng_tracker()
    outer = torch.get_rng_state()
    with tracker.fork():
        first = torch.rand(4)
    with tracker.fork():
        second = torch.rand(4)
    expected = torch.rand(8, generator=torch.Generator().manual_seed(seed + 2718))  # tp_rank 0
    return {
        "tracker_class": type(tracker).__name__,
        "tracker_seeded_like_megatron": torch.equal(torch.cat([first, second]), expected),
        "tracker_restores_outer_state": torch.equal(outer, torch.get_rng_state()),
    }


def checkpoint_round_trip(ckpt_dir: str) -> dict:
    from megatron.core import dist_checkpointing, tensor_parallel

    from sedd_megatron import checksums

    os.makedirs(ckpt_dir, exist_ok=True)
    model = tiny_gpt(tiny_config())
    checksums.hash_megatron_shard_writes()
    dist_checkpointing.save(model.sharded_state_dict(), ckpt_dir)
    hashed = {
        os.path.relpath(path, os.path.realpath(ckpt_dir)): digest == checksums.file_digest(path)
        for path, (_, digest) in checksums._WRITTEN.items()
    }
    saved = {k: v.detach().clone() for k, v in model.state_dict().items() if v is not None}

    torch.manual_seed(999)
    tensor_parallel.model_parallel_cuda_manual_seed(999)
    fresh = tiny_gpt(tiny_config())
    differs_before = any(
        not torch.equal(v, saved[k]) for k, v in fresh.state_dict().items() if k in saved
    )
    fresh.load_state_dict(dist_checkpointing.load(fresh.sharded_state_dict(), ckpt_dir))
    loaded = fresh.state_dict()
    mismatched = [k for k, v in saved.items() if not torch.equal(loaded[k], v)]
    return {
        "ckpt_differs_before_load": differs_before,
        "ckpt_mismatched_after_load": mismatched,
        "ckpt_tensors": len(saved),
        "ckpt_hashed_while_written": hashed,  # relative name -> equals the file's digest
    }


def main():
    start_worker()
    from sedd_megatron.runtime import enable_cpu_megatron, world

    seed = 1234
    with world(seed=seed):  # calls enable_cpu_megatron()
        results = {
            "world_size": torch.distributed.get_world_size(),
            "enable_again": enable_cpu_megatron(),
            "function_modes": len(torch.overrides._get_current_function_mode_stack()),
        }
        results.update(rng_tracker(seed))
        results.update(block_forward_backward())
        results.update(checkpoint_round_trip(sys.argv[1]))
        report(**results)


if __name__ == "__main__":
    main()
