"""Per-step training metrics written as JSON lines (``--sedd-metrics-file``).

Megatron's own log averages over ``--log-interval`` and, after a restart, mixes two iterations;
this file has exactly one line per optimizer step: the step's loss in nats/token over the whole
global batch, the gradient norm and the learning rate. A run that starts at iteration N (resuming
from a checkpoint, or N = 0) first cuts the file to the records of iterations up to N
(:func:`truncate_jsonl`), so steps re-run after a restart are not recorded twice.
"""

import json
import os
import stat

import torch

from sedd_megatron.atomic import atomic_write_bytes


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


def _iteration(line: bytes) -> int | None:
    """The ``iteration`` of a record line; None for anything else (blank, foreign, torn)."""
    try:
        record = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return None
    value = record.get("iteration") if isinstance(record, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def truncate_jsonl(path: str, iteration: int) -> int:
    """Drop the records of iterations after ``iteration``; returns how many lines went.

    A run resumed from the checkpoint of iteration N re-runs N+1, N+2, ... whose records an
    earlier run may have written already. Lines that are not records (blank, not JSON) stay,
    except a torn last line (no newline: a kill during :func:`append_jsonl`). The file is
    rewritten under a temporary name and renamed over the old one (its permissions kept), and
    only when something goes.
    """
    if not os.path.isfile(path):
        return 0
    with open(path, "rb") as f:
        lines = f.readlines()
    kept = []
    for number, line in enumerate(lines, 1):
        step = _iteration(line)
        if step is not None and step > iteration:
            continue
        if step is None and number == len(lines) and not line.endswith(b"\n") and line.strip():
            continue  # torn by a kill in the middle of a write
        kept.append(line)
    if kept and not kept[-1].endswith(b"\n"):  # a whole record whose newline a kill cut off
        kept[-1] += b"\n"
    if kept == lines:
        return 0
    mode = stat.S_IMODE(os.stat(path).st_mode)
    atomic_write_bytes(path, b"".join(kept), fsync=True, permissions=mode)
    return len(lines) - len(kept)
