"""The ELBO estimator queues device work without waiting on it: model outputs are read back to
the host once, after the last model call (on a GPU every read-back is a synchronisation).

The model's outputs are a tensor subclass standing in for device tensors: every read-back
(``cpu``, ``item``, ``tolist``, ``numpy``, Python conversions, writes into a host tensor) of
one of them, or of anything computed from one, is recorded with the model calls made by then.
"""

import torch

from sedd_megatron.evaluation.designs import build_design
from sedd_megatron.evaluation.estimator import evaluate_blocks
from tests.evaluation.test_confidence import ContextFreeScorer

READ_BACKS = {
    torch.Tensor.cpu,
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
}


class OnDevice(torch.Tensor):
    """A CPU tensor that records when its values are read back to the host."""

    log: list[int] = []  # model calls made at each read-back
    calls = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        into_host = func in (torch.Tensor.__setitem__, torch.Tensor.copy_) and not isinstance(
            args[0], OnDevice
        )  # a device value written into a host tensor
        if func in READ_BACKS or into_host:
            cls.log.append(cls.calls)
        return super().__torch_function__(func, types, args, kwargs or {})


class DeviceScorer(ContextFreeScorer):
    def score_entropy(self, x_t, sigma, x0):
        OnDevice.calls += 1
        return super().score_entropy(x_t, sigma, x0).as_subclass(OnDevice)


def _read_backs(scorer, batch_size):
    OnDevice.log, OnDevice.calls = [], 0
    blocks = torch.randint(0, scorer.num_tokens, (3, scorer.seq_length))
    design = build_design("mc", 10, scorer.graph, scorer.noise, scorer.seq_length)
    results = evaluate_blocks(scorer, blocks, design, batch_size=batch_size, progress=False)
    assert [r.block for r in results] == [0, 1, 2] and OnDevice.calls == -(-30 // batch_size)
    return list(OnDevice.log), OnDevice.calls


def test_outputs_are_read_back_only_after_the_last_model_call():
    log, calls = _read_backs(DeviceScorer(), batch_size=4)
    assert log, "the results must be read back at the end"
    assert all(at == calls for at in log), f"read-backs after model calls {log} of {calls}"


def test_the_check_sees_a_read_back_per_batch():
    """The same estimator with a model that reads its output back each call (as a per-batch
    ``.cpu()`` would) is caught: the check can fail."""

    class Eager(DeviceScorer):
        def score_entropy(self, x_t, sigma, x0):
            out = super().score_entropy(x_t, sigma, x0)
            out.sum().item()
            return out

    log, calls = _read_backs(Eager(), batch_size=4)
    assert sorted(set(log)) != [calls]
