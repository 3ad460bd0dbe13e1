"""Forward-only inference through Megatron's pipeline schedule (any PP size, one micro-batch)."""

import torch


def pipeline_forward(model, x_t: torch.Tensor, sigma: torch.Tensor, x0=None):
    """Run ``model(x_t, sigma, x0=x0)`` across the pipeline stages without gradients.

    Every rank of the pipeline calls this with the same inputs. Returns the last stage's output
    (the log-score shard, or the per-token score entropy when ``x0`` is given) on last-stage
    ranks and None elsewhere. Without pipeline parallelism it is a plain call.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if model.pp_group.size() == 1:
        with torch.no_grad():
            return model(x_t, sigma, x0=x0)

    captured = {}

    def loss_func(output):
        captured["output"] = output.detach()
        return output.new_zeros(()), {}

    def forward_step(data_iterator, model_chunk):
        next(data_iterator)
        return model_chunk(x_t, sigma, x0=x0), loss_func

    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None]),
        model=[model],
        num_microbatches=1,
        seq_length=x_t.shape[1],
        micro_batch_size=x_t.shape[0],
        forward_only=True,
    )
    return captured.get("output")
