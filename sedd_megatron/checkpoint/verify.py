"""Comparing a converted model with its source: log-scores on the same random (x_t, sigma)."""

import torch
import torch.distributed as dist

from sedd_megatron.models.sedd.pipeline import pipeline_forward

TOLERANCE = 1e-5  # largest allowed relative difference of the log-scores (float32)


def random_inputs(config, batch: int = 2, length: int = 32, seed: int = 0):
    """x_t over all vocabulary rows (MASK included for absorb) and sigma in [0.05, 5]."""
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randint(0, config.vocab_rows, (batch, min(length, config.length)), generator=gen)
    sigma = 0.05 + 4.95 * torch.rand(batch, generator=gen)
    return x_t, sigma


@torch.no_grad()
def full_log_scores(model, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Log-scores [b, s, vocab_rows] (padding dropped) of a possibly TP/PP-split SEDDModel.

    Collective over the model's TP and PP groups; every rank gets the result (on the CPU).
    """
    device = next(model.parameters()).device
    x_t, sigma = x_t.to(device), sigma.to(device)
    pp_group, tp_group = model.pp_group, model.tp_group
    out = pipeline_forward(model, x_t, sigma)
    full = None
    if model.post_process:
        parts = [torch.empty_like(out) for _ in range(tp_group.size())]
        dist.all_gather(parts, out.contiguous(), group=tp_group)
        full = torch.cat(parts, dim=-1)[..., : model.config.vocab_rows].cpu()
    if pp_group.size() > 1:
        box = [full]
        last = dist.get_global_rank(pp_group, pp_group.size() - 1)
        dist.broadcast_object_list(box, src=last, group=pp_group)
        full = box[0]
    return full


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (log-scores are finite once padding is dropped)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def compare_with_plain(model, plain, config) -> float:
    """Largest relative difference of the log-scores of ``model`` (Megatron) and ``plain``."""
    x_t, sigma = random_inputs(config)
    with torch.no_grad():
        expected = plain.eval()(x_t, sigma)
    return relative_difference(full_log_scores(model, x_t, sigma), expected)
