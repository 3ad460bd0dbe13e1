"""Worker (torchrun, 2 processes): a TransformerBlock at TP=2 (with and without sequence
parallelism) matches the same block at TP=1, for outputs, input gradients and every parameter
gradient shard. Weights are built with ``use_cpu_initialization`` from one seed, so TP shards
are exact slices of the TP=1 weights."""

import torch
from common import BATCH, HIDDEN, SEQ, report, start_worker, tiny_block, tiny_config

SEED = 1234


def run_block(tp: int, sequence_parallel: bool = False):
    """Build the block in the current world (TP = ``tp``); return output, input grad,
    {name: (param, grad)}."""
    from megatron.core import parallel_state

    config = tiny_config(tensor_model_parallel_size=tp, sequence_parallel=sequence_parallel)
    block = tiny_block(config)

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=gen)
    weights = torch.randn(SEQ, BATCH, HIDDEN, generator=gen)
    if sequence_parallel:  # each TP rank holds a contiguous slice of the sequence
        rank = parallel_state.get_tensor_model_parallel_rank()
        x, weights = x.chunk(tp)[rank], weights.chunk(tp)[rank]
    x = x.clone().requires_grad_()
    out = block(x, attention_mask=None)
    (out * weights).sum().backward()
    if sequence_parallel:
        # What finalize_model_grads does for params tagged sequence_parallel=True.
        group = parallel_state.get_tensor_model_parallel_group()
        for param in block.parameters():
            if getattr(param, "sequence_parallel", False):
                torch.distributed.all_reduce(param.grad, group=group)
    params = {name: (p, p.grad.clone()) for name, p in block.named_parameters()}
    return out.detach(), x.grad.clone(), params


def shard_of(full: torch.Tensor, sharded: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    """The slice of a TP=1 tensor that TP rank ``rank`` holds (full tensor if replicated)."""
    if not getattr(sharded, "tensor_model_parallel", False):
        return full
    return full.chunk(tp, dim=sharded.partition_dim)[rank]


def error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """Max absolute difference, relative to the reference's scale when that exceeds 1."""
    return ((value - reference).abs().max() / (1 + reference.abs().max())).item()


def max_errors(reference, result, tp, rank, sequence_parallel):
    ref_out, ref_xgrad, ref_params = reference
    out, xgrad, params = result
    if sequence_parallel:
        ref_out, ref_xgrad = ref_out.chunk(tp)[rank], ref_xgrad.chunk(tp)[rank]
    errors = {"output": error(out, ref_out), "input_grad": error(xgrad, ref_xgrad)}
    assert params.keys() == ref_params.keys()
    for name, (param, grad) in params.items():
        ref_param, ref_grad = ref_params[name]
        assert torch.equal(param, shard_of(ref_param, param, tp, rank)), f"weights: {name}"
        errors[f"grad:{name}"] = error(grad, shard_of(ref_grad, param, tp, rank))
    return errors


def worst_over_ranks(errors: dict) -> dict:
    values = torch.tensor(list(errors.values()), dtype=torch.float64)
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return dict(zip(errors, values.tolist(), strict=True))


def main():
    start_worker()
    from megatron.core import parallel_state

    from sedd_megatron.runtime import world

    with world(tp=1, seed=SEED):  # the process group; TP=2 then replaces the model-parallel state
        reference = run_block(tp=1)
        errors = {}
        for sp in (False, True):
            if parallel_state.model_parallel_is_initialized():
                parallel_state.destroy_model_parallel()
            with world(tp=2, seed=SEED):
                result = run_block(tp=2, sequence_parallel=sp)
                rank = parallel_state.get_tensor_model_parallel_rank()
                errors["sp" if sp else "tp"] = worst_over_ranks(
                    max_errors(reference, result, 2, rank, sp)
                )
        report(worst={k: max(v.values()) for k, v in errors.items()}, errors=errors)


if __name__ == "__main__":
    main()
