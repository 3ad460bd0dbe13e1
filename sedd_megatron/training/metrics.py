"""Per-step training metrics written as JSON lines (``--sedd-metrics-file``).

Megatron's own log averages over ``--log-interval`` and, after a restart, mixes two iterations;
this file has exactly one line per optimizer step: the step's loss in nats/token over the whole
global batch, the gradient norm and the learning rate.
"""

import json
import os

import torch


class StepMetrics:
    """Accumulates the loss numerator/denominator of the micro-batches of one training step."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.loss_sum = 0.0
        self.tokens = 0

    def add(self, loss_sum: torch.Tensor, tokens: int) -> None:
        if torch.is_grad_enabled():  # training micro-batches only, not evaluation
            self.loss_sum += float(loss_sum)
            self.tokens += int(tokens)

    def global_loss(self, device) -> float:
        """nats/token over all ranks (only last-stage TP-rank-0 ranks contribute; collective)."""
        from megatron.core import parallel_state as ps

        contributes = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
        both = torch.tensor(
            [self.loss_sum, float(self.tokens)] if contributes else [0.0, 0.0],
            dtype=torch.float64,
            device=device,
        )
        torch.distributed.all_reduce(both)
        return (both[0] / both[1].clamp_min(1)).item()


STEP_METRICS = StepMetrics()


def append_jsonl(path: str, record: dict) -> None:
    """Append one JSON line and flush it to disk (survives a SIGKILL right after)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
