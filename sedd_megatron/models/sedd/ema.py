"""Exponential moving average of the weights, saved in Megatron checkpoints with their sharding.

As in the reference (docs/math.md §4.4): after every optimizer step k (1-based),
shadow <- shadow - (1 - d_k) (shadow - param) with d_k = min(decay, (1 + k) / (10 + k)), over the
trainable parameters. The shadow lives in float32 buffers of an ``EMAWeights`` child module named
``ema``, so plain ``state_dict``/``load_state_dict`` carry it; for ``torch_dist`` checkpoints each
shadow is saved under ``ema.<key of its parameter>`` with exactly the parameter's sharding, so EMA
weights reshard across TP/PP like the weights themselves.
"""

from contextlib import contextmanager
from dataclasses import replace

import torch


def _buffer_name(param_name: str) -> str:
    return param_name.replace(".", "__")


class EMAWeights(torch.nn.Module):
    """float32 shadows of ``owner``'s trainable parameters (attach with :func:`attach_ema`)."""

    def __init__(self, owner: torch.nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        object.__setattr__(self, "_owner", owner)  # a back-reference, not a child module
        self._busy = False
        self.param_names = [n for n, p in owner.named_parameters() if p.requires_grad]
        params = dict(owner.named_parameters())
        for name in self.param_names:
            self.register_buffer(_buffer_name(name), params[name].detach().float().clone())

    def _pairs(self):
        params = dict(self._owner.named_parameters())
        return [(params[n], getattr(self, _buffer_name(n))) for n in self.param_names]

    def _apply(self, fn, recurse=True):
        # Megatron's Float16Module casts the whole model to bf16/fp16: keep the shadow in fp32.
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf is not None and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self

    def decay_at(self, step: int) -> float:
        """Decay used by the update after optimizer step ``step`` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the shadow towards the current parameters after optimizer step ``step``."""
        weight = 1.0 - self.decay_at(step)
        pairs = self._pairs()
        shadows = [s for _, s in pairs]
        torch._foreach_lerp_(shadows, [p.detach().float() for p, _ in pairs], weight)

    @contextmanager
    def swapped_in(self):
        """Temporarily load the EMA weights into the model (for evaluation or export)."""
        pairs = self._pairs()
        backup = [p.detach().clone() for p, _ in pairs]
        with torch.no_grad():
            for param, shadow in pairs:
                param.copy_(shadow.to(param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for (param, _), saved in zip(pairs, backup, strict=True):
                    param.copy_(saved)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        """Each shadow as its parameter's ShardedTensor, renamed ``ema.<parameter key>``."""
        if self._busy:  # the owner's own sharded_state_dict below recurses into this child
            return {}
        owner_prefix = prefix[: -len("ema.")] if prefix.endswith("ema.") else prefix
        self._busy = True
        try:
            owner_state = self._owner.sharded_state_dict(owner_prefix, sharded_offsets, metadata)
        finally:
            self._busy = False
        by_storage = {}
        for value in owner_state.values():
            data = getattr(value, "data", None)
            if isinstance(data, torch.Tensor) and hasattr(value, "key"):
                by_storage[(data.data_ptr(), tuple(data.shape))] = value
        out = {}
        for name, (param, shadow) in zip(self.param_names, self._pairs(), strict=True):
            sharded = by_storage.get((param.data_ptr(), tuple(param.shape)))
            if sharded is None:
                raise RuntimeError(f"EMA: no sharded tensor found for parameter {name}")
            # The shadow is float32 even when the parameter is bf16/fp16. A factory (SwiGLU's
            # fc1, saved as its gate and up halves) builds its tensors from ``data``.
            dtype = {} if hasattr(sharded, "build_fn") else {"dtype": shadow.dtype}
            out[f"{prefix}{_buffer_name(name)}"] = replace(
                sharded, key=f"ema.{sharded.key}", data=shadow, **dtype
            )
        return out


def attach_ema(model: torch.nn.Module, decay: float) -> EMAWeights:
    """Give ``model`` an ``ema`` child holding float32 shadows of its trainable parameters."""
    if hasattr(model, "ema"):
        raise ValueError("model already has an 'ema' attribute")
    ema = EMAWeights(model, decay)
    model.ema = ema
    return ema


def find_ema(model) -> EMAWeights | None:
    """The EMAWeights of a (possibly Megatron-wrapped) model chunk, if any."""
    module = model
    while not isinstance(getattr(module, "ema", None), EMAWeights) and hasattr(module, "module"):
        module = module.module
    ema = getattr(module, "ema", None)
    return ema if isinstance(ema, EMAWeights) else None
