"""Fixes for upstream bugs in Megatron-Core's distributed optimizer with the torch Adam fallback.

Without Apex or Transformer Engine, Megatron's ``DistributedOptimizer`` wraps ``torch.optim``
Adam/AdamW (``distrib_optimizer.HAVE_APEX_OR_TE`` is False), whose per-parameter state holds a
``step`` tensor. megatron-core 0.19.2 mishandles it when a checkpoint is loaded, on CPU and on
GPU alike:

(a) ``DistributedOptimizer.load_state_dict`` gives every parameter state *the same* ``step``
    tensor; ``torch.optim.Optimizer.load_state_dict`` keeps that aliasing, so each optimizer
    step then adds the number of parameters to the shared counter. Worse, the state loader
    (``_set_main_param_and_optimizer_states``) copies the placeholder ``step`` (0) captured when
    the sharded state dict was built over that shared tensor: after a resume, Adam's bias
    correction restarts from 0 and then races ahead, and the updates diverge from an
    uninterrupted run.
(b) ``DistributedOptimizer.state_dict`` asserts ``len(steps) == 1`` over the inner optimizer's
    per-parameter states, which are empty before the first step -- exactly the situation when a
    run resumes (``sharded_state_dict(is_loading=True)`` calls it).
(c) ``load_parameter_state_from_dp_reshardable`` (the default ``dp_reshardable`` format) copies
    into the fp32 main parameters, which are leaves requiring grad, without ``torch.no_grad()``
    (its sibling loaders have the decorator), so autograd raises.

:func:`apply_upstream_fixes` patches those three methods in place. Each patched method checks at
call time whether the torch Adam fallback is in use and otherwise runs Megatron's code untouched,
so the fixes are no-ops with Apex/TE fused Adam.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

_PATCHED_MARK = "_sedd_upstream_fix"


def uses_torch_adam_fallback(optimizer=None) -> bool:
    """Whether Megatron's distributed optimizer uses torch Adam (no Apex/TE fused Adam).

    With ``optimizer`` (a ``DistributedOptimizer``), also check that its inner optimizer is a
    torch Adam/AdamW, the only optimizer whose ``step`` state the fixes handle.
    """
    from megatron.core.optimizer import distrib_optimizer

    if distrib_optimizer.HAVE_APEX_OR_TE:
        return False
    if optimizer is None:
        return True
    return isinstance(getattr(optimizer, "optimizer", None), (torch.optim.Adam, torch.optim.AdamW))


def _state_dict_when_empty(self):
    """Fix (b): ``state_dict()`` of a torch-Adam distributed optimizer that has not stepped yet.

    Same layout as Megatron's (inner state dict without "state", params removed, the common
    ``step`` in every param group, grad scaler state), with step 0.
    """
    inner = self.optimizer.state_dict()
    optimizer_state = {k: v for k, v in inner.items() if k != "state"}
    for group in optimizer_state["param_groups"]:
        del group["params"]
        group["step"] = 0
    state_dict = {"optimizer": optimizer_state}
    if self.grad_scaler:
        state_dict["grad_scaler"] = self.grad_scaler.state_dict()
    return state_dict


def _patch_state_dict(cls) -> None:
    original = cls.state_dict
    if getattr(original, _PATCHED_MARK, False):
        return

    @functools.wraps(original)
    def state_dict(self):
        if uses_torch_adam_fallback(self) and len(self.optimizer.state) == 0:
            return _state_dict_when_empty(self)
        return original(self)

    setattr(state_dict, _PATCHED_MARK, True)
    cls.state_dict = state_dict


def _saved_step(state_dict) -> float | None:
    groups = state_dict.get("optimizer", {}).get("param_groups", [])
    steps = {group["step"] for group in groups if "step" in group}
    if len(steps) > 1:
        raise ValueError(f"param groups disagree on the Adam step: {sorted(steps)}")
    return steps.pop() if steps else None


def _patch_load_state_dict(cls) -> None:
    original = cls.load_state_dict
    if getattr(original, _PATCHED_MARK, False):
        return

    @functools.wraps(original)
    def load_state_dict(self, state_dict):
        if not uses_torch_adam_fallback(self) or self.ddp_config.use_megatron_fsdp:
            return original(self, state_dict)
        step = _saved_step(state_dict)
        original(self, state_dict)
        if step is None:
            return
        # Fix (a): one step tensor per parameter, holding the checkpoint's step, set after the
        # parameter-state loader has (wrongly) copied its placeholder over the shared tensor.
        for param_state in self.optimizer.state.values():
            if "step" in param_state:
                old = param_state["step"]
                param_state["step"] = torch.tensor(float(step), dtype=old.dtype, device=old.device)

    setattr(load_state_dict, _PATCHED_MARK, True)
    cls.load_state_dict = load_state_dict


def _patch_dp_reshardable_loader(cls) -> None:
    original = cls.load_parameter_state_from_dp_reshardable
    if getattr(original, _PATCHED_MARK, False):
        return

    @functools.wraps(original)
    def load_parameter_state_from_dp_reshardable(self, state_dict):
        with torch.no_grad():  # fix (c)
            return original(self, state_dict)

    setattr(load_parameter_state_from_dp_reshardable, _PATCHED_MARK, True)
    cls.load_parameter_state_from_dp_reshardable = load_parameter_state_from_dp_reshardable


#: The fixes by name, as documented in the module docstring.
FIXES = {
    "shared_step": _patch_load_state_dict,  # (a)
    "empty_state": _patch_state_dict,  # (b)
    "no_grad_loader": _patch_dp_reshardable_loader,  # (c)
}


def apply_upstream_fixes(fixes: Iterable[str] = tuple(FIXES)) -> None:
    """Patch Megatron's ``DistributedOptimizer`` for the torch Adam fallback (idempotent).

    Safe on GPU and with Apex/TE: the patched methods defer to Megatron's unless the torch Adam
    fallback is in use. Call before loading a distributed-optimizer checkpoint. ``fixes``
    selects a subset of :data:`FIXES` (for regression tests); the default applies all.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for name in fixes:
        FIXES[name](DistributedOptimizer)
