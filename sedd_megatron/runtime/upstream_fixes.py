"""Fixes for upstream problems of megatron-core 0.19.2 (and 0.18) and torch, on every device.

Each fix is probed before it is applied (:data:`PROBES`, :func:`apply_upstream_fixes`): from the
code and objects of the installed versions, never a version string, the probe says whether the
defect is there (apply), absent (skip), or whether the internal it patches moved (one line naming
the fix and the versions; for the safety fix (h) an error: nothing is loaded without it).

Distributed optimizer with the torch Adam fallback. Without Apex or Transformer Engine,
Megatron's ``DistributedOptimizer`` wraps ``torch.optim`` Adam/AdamW
(``distrib_optimizer.HAVE_APEX_OR_TE`` is False), whose per-parameter state holds a ``step``
tensor. megatron-core 0.19.2 mishandles it when a checkpoint is loaded:

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

Each patched method checks at call time whether the torch Adam fallback is in use and otherwise
runs Megatron's code untouched, so these are no-ops with Apex/TE fused Adam.

Start-up with the pip wheel:

(d) ``megatron.training`` compiles the dataset index helpers at start-up by running ``make`` in
    ``megatron/core/datasets``; the wheel ships no Makefile (training dies with "No makefile")
    but does ship the prebuilt ``helpers_cpp`` extension. ``compile_helpers`` is replaced by one
    that imports the prebuilt module and runs ``make`` only where a Makefile exists (a source
    checkout), with one clear error when neither works.

Speed without Apex/TE (they matter on GPUs, where the optimizer step was launch-bound):

(e) The multi-tensor fallbacks Megatron uses for the gradient norm and for scaling/copying lists
    of tensors (``local_multi_tensor_l2_norm``, ``local_multi_tensor_scale``) loop over the
    parameters; the norm converts every per-parameter norm to a Python float (one host
    synchronisation per parameter, each step). They are replaced by ``torch._foreach_*``
    versions with the same results and a single device-side reduction.
(f) Megatron builds ``torch.optim.Adam(W)`` without ``fused``: the step then runs torch's
    multi-tensor ("foreach") kernels. When every parameter of the optimizer is a CUDA floating
    tensor, the param groups are switched to torch's fused Adam kernel (one kernel per group).

Help text:

(g) argparse %-formats help strings; megatron-core 0.19.2 builds some from docstrings with a
    literal ``%``, so ``pretrain_sedd.py --help`` raised "unsupported format character".
    :func:`escape_help_percents` (called on the parser by ``add_sedd_args``, not in
    :data:`FIXES`: it acts on one parser) escapes them.

Loading checkpoints without running code from them (``sedd_megatron.safe_load``):

(h) ``safe_checkpoint_reads``. torch's ``FileSystemReader.read_metadata`` unpickles a
    torch_dist ``.metadata`` file with plain ``pickle.load``, and ``DefaultLoadPlanner.load_bytes``
    (Megatron's common state, RNG state, extra state in the ``.distcp`` shards) calls
    ``torch.load(weights_only=False)``: a crafted checkpoint directory runs arbitrary code in
    ``pretrain_sedd.py --load`` and in every tool. ``read_metadata`` now uses the restricted
    unpickler of ``safe_load`` (torch_dist metadata classes only; anything else is a CheckpointError
    naming the file and the refused global) and ``load_bytes`` loads ``weights_only=True``.
    Megatron's ``common.pt`` loader and its ``_load_base_checkpoint`` (the legacy
    ``--ckpt-format torch`` files) run with weights-only loading forced (``safe_load.
    weights_only_loads``, which also overrides ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``).
    ``_load_base_checkpoint`` first runs ``safe_load.check_load_dir`` (tracker, iteration directory,
    metadata, shards present and long enough), and Megatron's ways of giving up with exit status
    0 -- ``sys.exit()`` after "Invalid metadata file" (a corrupt or empty tracker) or after
    "could not load the checkpoint" -- become a CheckpointError (non-zero exit).
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterable

import torch

from sedd_megatron import safe_load
from sedd_megatron.errors import CheckpointError

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


# ------------------------------------------------------------------- (d) dataset helpers
class DatasetHelpersError(RuntimeError):
    """Neither the prebuilt dataset helpers nor a source tree to build them is available."""


def load_dataset_helpers() -> None:
    """Make ``megatron.core.datasets.helpers_cpp`` importable: the wheel's prebuilt module, or
    ``make`` in a source checkout (where a Makefile exists), as Megatron's own start-up does."""
    import megatron.core.datasets as datasets

    directory = os.path.dirname(os.path.abspath(datasets.__file__))
    if os.path.isfile(os.path.join(directory, "Makefile")):
        done = subprocess.run(["make", "-C", directory], capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            cause = [line for line in lines if not line.startswith("make")] or lines
            raise DatasetHelpersError(
                f"building Megatron's dataset helpers failed (make -C {directory}): {cause[-1]}"
            )
    try:
        importlib.import_module("megatron.core.datasets.helpers_cpp")
    except ImportError as err:
        raise DatasetHelpersError(
            f"Megatron's dataset helpers (megatron.core.datasets.helpers_cpp) do not import and "
            f"{directory} has no Makefile to build them: reinstall megatron-core ({err})"
        ) from err


def _fix_dataset_helpers() -> None:
    from megatron.core.datasets import utils

    if getattr(utils.compile_helpers, _PATCHED_MARK, False):
        return

    @functools.wraps(utils.compile_helpers)
    def compile_helpers():
        load_dataset_helpers()

    setattr(compile_helpers, _PATCHED_MARK, True)
    utils.compile_helpers = compile_helpers


# ------------------------------------------------------------- (e) foreach multi-tensor ops
def foreach_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """Drop-in for ``amp_C.multi_tensor_l2norm`` / Megatron's local fallback: the float32 L2
    norm of all tensors of ``tensor_lists[0]`` as a [1] tensor on their device (no sync)."""
    tensors = tensor_lists[0]
    if not tensors:
        return torch.zeros(1, dtype=torch.float, device=noop_flag.device), None
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack(norms)).reshape(1), None


def foreach_scale(chunk_size, noop_flag, tensor_lists, scale):
    """Drop-in for ``amp_C.multi_tensor_scale`` / Megatron's local fallback:
    ``dst = src * scale`` for each pair of ``tensor_lists`` (``[src, dst]``)."""
    sources, targets = tensor_lists[0], tensor_lists[1]
    if not targets:
        return
    if all(s is t for s, t in zip(sources, targets, strict=True)):
        if scale != 1.0:
            torch._foreach_mul_(targets, scale)
        return
    torch._foreach_copy_(targets, sources if scale == 1.0 else torch._foreach_mul(sources, scale))


def _fix_multi_tensor_ops() -> None:
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as mcore_optimizer

    if clip_grads.l2_norm_impl is utils.local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = foreach_l2_norm
    for module in (clip_grads, mcore_optimizer):
        if module.multi_tensor_scale_impl is utils.local_multi_tensor_scale:
            module.multi_tensor_scale_impl = foreach_scale


# ---------------------------------------------------------------------- (f) fused torch Adam
def use_fused_adam(optimizer, device_types: tuple[str, ...] = ("cuda",)) -> bool:
    """Switch a torch Adam/AdamW to its fused kernel when every parameter is a floating tensor
    on one of ``device_types``; returns whether it did. Call before the first step."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params or any(p.device.type not in device_types for p in params):
        return False
    if any(not p.is_floating_point() for p in params) or optimizer.state:
        return False
    if any(group.get("differentiable") for group in optimizer.param_groups):
        return False
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
    optimizer.defaults["fused"], optimizer.defaults["foreach"] = True, False
    optimizer._step_supports_amp_scaling = True
    return True


def _inner_optimizers(optimizer):
    """The torch optimizers inside a Megatron (chained) optimizer."""
    for child in getattr(optimizer, "chained_optimizers", None) or [optimizer]:
        inner = getattr(child, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            yield inner


#: ``SEDD_FUSED_ADAM_ON_CPU=1`` switches CPU parameters to torch's fused Adam too: how the tests
#: drive the optimizer path a CUDA run takes (torch has a fused CPU kernel) through pretrain.
FUSED_ADAM_ON_CPU = "SEDD_FUSED_ADAM_ON_CPU"


def fused_adam_device_types() -> tuple[str, ...]:
    """The devices whose parameters get torch's fused Adam (``use_fused_adam``)."""
    return ("cuda", "cpu") if os.environ.get(FUSED_ADAM_ON_CPU) == "1" else ("cuda",)


def _fix_fused_adam() -> None:
    import megatron.core.optimizer as mcore_optim

    original = mcore_optim._get_megatron_optimizer_based_on_param_groups
    if getattr(original, _PATCHED_MARK, False):
        return

    @functools.wraps(original)
    def build(*args, **kwargs):
        result = original(*args, **kwargs)
        if mcore_optim.USING_PYTORCH_OPTIMIZER:
            for inner in _inner_optimizers(result):
                use_fused_adam(inner, fused_adam_device_types())
        return result

    setattr(build, _PATCHED_MARK, True)
    mcore_optim._get_megatron_optimizer_based_on_param_groups = build


# ------------------------------------------------------------ (h) safe checkpoint reads
def _safe_read_metadata(self, *args, **kwargs):
    """``FileSystemReader.read_metadata`` with the restricted unpickler (fix (h))."""
    from torch.distributed.checkpoint.metadata import StorageMeta

    metadata = safe_load.read_metadata(self.path, rank=kwargs.get("rank"))
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    metadata.storage_meta.load_id = self.load_id
    return metadata


def _weights_only_load_bytes(self, read_item, value):
    """``DefaultLoadPlanner.load_bytes`` with ``torch.load(weights_only=True)`` (fix (h))."""
    from torch.distributed.checkpoint._traverse import set_element

    fqn = read_item.dest_index.fqn
    try:
        loaded = torch.load(value, weights_only=True)
    except Exception as err:  # corrupt bytes raise several kinds of error
        refused, detail = safe_load.weights_only_failure(err, value)
        if refused:
            raise CheckpointError(f"refusing to load the checkpoint item {fqn}: {detail}") from None
        raise CheckpointError(
            f"the checkpoint item {fqn} is unreadable (corrupt: {detail})"
        ) from None
    if self.flatten_state_dict:
        set_element(self.original_state_dict, self.mappings[fqn], loaded)
    else:
        self.state_dict[fqn] = loaded


def _forcing_weights_only(original):
    @functools.wraps(original)
    def wrapper(*args, **kwargs):

        with safe_load.weights_only_loads():
            return original(*args, **kwargs)

    setattr(wrapper, _PATCHED_MARK, True)
    return wrapper


def _strict_tracker_reader(original):
    @functools.wraps(original)
    def read_metadata(tracker_filename):

        safe_load.parse_tracker(tracker_filename)  # CheckpointError instead of sys.exit() (rc 0)
        return original(tracker_filename)

    setattr(read_metadata, _PATCHED_MARK, True)
    return read_metadata


def _checked_base_loader(original):
    @functools.wraps(original)
    def load_base_checkpoint(load_dir, args, *rest, **kwargs):
        folder = None
        if load_dir is not None and getattr(args, "non_persistent_ckpt_type", None) is None:
            folder = safe_load.check_load_dir(load_dir, getattr(args, "ckpt_step", None) or None)
        try:
            with safe_load.weights_only_loads():
                return original(load_dir, args, *rest, **kwargs)
        except SystemExit as exit_:
            if exit_.code not in (None, 0) or folder is None:
                raise  # an error status already, or --exit-on-missing-checkpoint
            raise CheckpointError(
                f"cannot load the checkpoint {folder}: Megatron gave up (see its message above)"
            ) from None

    setattr(load_base_checkpoint, _PATCHED_MARK, True)
    return load_base_checkpoint


def _fix_checkpoint_reads() -> None:
    from megatron.core.dist_checkpointing import serialization
    from megatron.core.dist_checkpointing.strategies import common
    from megatron.training import checkpointing
    from torch.distributed.checkpoint import default_planner, filesystem

    reader = filesystem.FileSystemReader
    if not getattr(reader.read_metadata, _PATCHED_MARK, False):
        setattr(_safe_read_metadata, _PATCHED_MARK, True)
        reader.read_metadata = _safe_read_metadata
    planner = default_planner.DefaultLoadPlanner
    if not getattr(planner.load_bytes, _PATCHED_MARK, False):
        setattr(_weights_only_load_bytes, _PATCHED_MARK, True)
        planner.load_bytes = _weights_only_load_bytes
    for module in (common, serialization):
        if not getattr(module.load_common, _PATCHED_MARK, False):
            module.load_common = _forcing_weights_only(module.load_common)
    if not getattr(checkpointing.read_metadata, _PATCHED_MARK, False):
        checkpointing.read_metadata = _strict_tracker_reader(checkpointing.read_metadata)
    if not getattr(checkpointing._load_base_checkpoint, _PATCHED_MARK, False):
        checkpointing._load_base_checkpoint = _checked_base_loader(
            checkpointing._load_base_checkpoint
        )


def _distributed_optimizer_fix(patch):
    def apply() -> None:
        from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

        patch(DistributedOptimizer)

    return apply


#: The fixes by name, as documented in the module docstring.
FIXES = {
    "shared_step": _distributed_optimizer_fix(_patch_load_state_dict),  # (a)
    "empty_state": _distributed_optimizer_fix(_patch_state_dict),  # (b)
    "no_grad_loader": _distributed_optimizer_fix(_patch_dp_reshardable_loader),  # (c)
    "dataset_helpers": _fix_dataset_helpers,  # (d)
    "multi_tensor_ops": _fix_multi_tensor_ops,  # (e)
    "fused_adam": _fix_fused_adam,  # (f)
    "safe_checkpoint_reads": _fix_checkpoint_reads,  # (h)
}


# ---------------------------------------------------------------- where each fix applies
class FixMoved(RuntimeError):
    """The internal a fix patches is not where the fix expects it (another upstream version)."""


def _source(obj) -> str:
    """The source of a function or method, unwrapped from our own patch; FixMoved if none."""
    import inspect

    obj = inspect.unwrap(obj, stop=lambda f: not getattr(f, _PATCHED_MARK, False))
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError) as err:
        raise FixMoved(f"no source for {getattr(obj, '__qualname__', obj)}") from err


def _attribute(owner, name: str, where: str):
    try:
        return getattr(owner, name)
    except AttributeError:
        raise FixMoved(f"{where}.{name} is gone") from None


def _distributed_optimizer():
    from megatron.core.optimizer import distrib_optimizer

    return _attribute(distrib_optimizer, "DistributedOptimizer", "distrib_optimizer")


def _needs_shared_step_fix() -> bool:
    """(a): the loader assigns one ``step`` tensor to every parameter state."""
    cls = _distributed_optimizer()
    source = _source(_attribute(cls, "load_state_dict", "DistributedOptimizer"))
    return re.search(r'\[\s*"step"\s*\]\s*=\s*step\s*$', source, re.M) is not None


def _needs_empty_state_fix() -> bool:
    """(b): ``state_dict()`` asserts one step over the (empty before a step) parameter states."""
    source = _source(_attribute(_distributed_optimizer(), "state_dict", "DistributedOptimizer"))
    return re.search(r'\["step"\]\.item\(\) for \w+ in [\w.\[\]"]*state', source) is not None


def _needs_no_grad_loader_fix() -> bool:
    """(c): the dp_reshardable loader copies into leaves that require grad, without no_grad."""
    cls = _distributed_optimizer()
    if not hasattr(cls, "load_parameter_state_from_dp_reshardable"):
        return False  # no dp_reshardable format in this version: nothing to fix
    source = _source(cls.load_parameter_state_from_dp_reshardable)
    return "no_grad" not in source.split("def ", 1)[0]


def _needs_dataset_helpers_fix() -> bool:
    """(d): Megatron runs ``make`` at start-up; an installed wheel has no Makefile."""
    import megatron.core.datasets as datasets
    from megatron.core.datasets import utils

    _attribute(utils, "compile_helpers", "megatron.core.datasets.utils")
    directory = os.path.dirname(os.path.abspath(datasets.__file__))
    return not os.path.isfile(os.path.join(directory, "Makefile"))


def _needs_multi_tensor_fix() -> bool:
    """(e): Megatron's local (per-parameter, host-syncing) multi-tensor fallbacks are in use."""
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as mcore_optimizer

    local_norm = _attribute(utils, "local_multi_tensor_l2_norm", "megatron.core.utils")
    local_scale = _attribute(utils, "local_multi_tensor_scale", "megatron.core.utils")
    used = [_attribute(clip_grads, "l2_norm_impl", "clip_grads") is local_norm]
    for module in (clip_grads, mcore_optimizer):
        used.append(_attribute(module, "multi_tensor_scale_impl", module.__name__) is local_scale)
    return any(used)


def _needs_fused_adam_fix() -> bool:
    """(f): Megatron falls back to torch Adam (built without ``fused=True``)."""
    import megatron.core.optimizer as mcore_optim

    where = "megatron.core.optimizer"
    _attribute(mcore_optim, "_get_megatron_optimizer_based_on_param_groups", where)
    return bool(_attribute(mcore_optim, "USING_PYTORCH_OPTIMIZER", where))


def _needs_safe_reads_fix() -> bool:
    """(h): torch still reads torch_dist metadata with ``pickle.load`` and item bytes with
    ``torch.load``, in the methods the fix replaces, and Megatron's loaders are where expected."""
    from megatron.core.dist_checkpointing import serialization
    from megatron.core.dist_checkpointing.strategies import common
    from megatron.training import checkpointing
    from torch.distributed.checkpoint import _traverse, default_planner, filesystem, metadata

    _attribute(_traverse, "set_element", "torch.distributed.checkpoint._traverse")
    _attribute(metadata, "StorageMeta", "torch.distributed.checkpoint.metadata")
    read = _attribute(filesystem.FileSystemReader, "read_metadata", "FileSystemReader")
    if not getattr(read, _PATCHED_MARK, False):  # ours already: it was probed when applied
        source = _source(read)
        if "pickle.load" not in source or "load_id" not in source:
            raise FixMoved("FileSystemReader.read_metadata no longer reads with pickle.load")
    load = _attribute(default_planner.DefaultLoadPlanner, "load_bytes", "DefaultLoadPlanner")
    if not getattr(load, _PATCHED_MARK, False):
        source = _source(load)
        if "torch.load" not in source or "flatten_state_dict" not in source:
            raise FixMoved("DefaultLoadPlanner.load_bytes no longer reads with torch.load")
    for module in (common, serialization):
        _attribute(module, "load_common", module.__name__)
    for name in ("read_metadata", "_load_base_checkpoint"):
        _attribute(checkpointing, name, "megatron.training.checkpointing")
    return True


#: name -> (letter in the module docstring, probe, safety fix). A probe returns whether the
#: defect exists here, judged from the code and objects (never a version string), and raises
#: FixMoved when the internal the fix patches is not where it expects.
PROBES = {
    "shared_step": ("a", _needs_shared_step_fix, False),
    "empty_state": ("b", _needs_empty_state_fix, False),
    "no_grad_loader": ("c", _needs_no_grad_loader_fix, False),
    "dataset_helpers": ("d", _needs_dataset_helpers_fix, False),
    "multi_tensor_ops": ("e", _needs_multi_tensor_fix, False),
    "fused_adam": ("f", _needs_fused_adam_fix, False),
    "safe_checkpoint_reads": ("h", _needs_safe_reads_fix, True),
}

#: What :func:`apply_upstream_fixes` did with each fix in this process: "applied", "not needed"
#: (the probe found no defect) or "unavailable" (the internal moved).
FIX_STATUS: dict[str, str] = {}


def upstream_versions() -> str:
    """``megatron-core X, torch Y`` as installed (for messages only; no probe uses it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        mcore = version("megatron-core")
    except PackageNotFoundError:
        mcore = "?"
    return f"megatron-core {mcore}, torch {torch.__version__}"


def fix_moved_message(name: str, reason: str) -> str:
    """The one line a user gets when fix ``name`` cannot be applied."""
    letter, _, safety = PROBES[name]
    consequence = (
        "refusing to load checkpoints without it (they could run code)"
        if safety
        else "skipped, so what it repairs may misbehave"
    )
    return (
        f"sedd-megatron upstream fix ({letter}) {name} does not fit {upstream_versions()}: "
        f"{reason}; {consequence} (tested versions: docs/usage.md §8)"
    )


def probe_fix(name: str) -> bool:
    """Whether fix ``name``'s defect exists here; raises FixMoved if its internal moved."""
    return PROBES[name][1]()


def apply_upstream_fixes(fixes: Iterable[str] = tuple(FIXES)) -> None:
    """Apply the fixes whose defect exists here (idempotent), on CPU and GPU alike.

    Each fix is probed first (:func:`probe_fix`) and applied only where its defect exists; the
    optimizer fixes also defer to Megatron's code unless the torch Adam fallback is in use. A
    fix whose internal moved prints one line naming it and the versions and is skipped; the
    safety fix (h) raises ``CheckpointError`` with that line instead, so nothing is loaded
    without it. Call before building the optimizer or loading a checkpoint. ``fixes`` selects a
    subset of :data:`FIXES` (for regression tests); the default applies all.
    """
    for name in fixes:
        try:
            needed = probe_fix(name)
        except FixMoved as moved:
            FIX_STATUS[name] = "unavailable"
            line = fix_moved_message(name, str(moved))
            if PROBES[name][2]:
                from sedd_megatron.errors import CheckpointError  # lazy: keeps this module light

                raise CheckpointError(line) from None
            if name not in _TOLD:
                _TOLD.add(name)
                print(line, file=sys.stderr, flush=True)
            continue
        if needed:
            FIXES[name]()
        FIX_STATUS[name] = "applied" if needed else "not needed"


_TOLD: set[str] = set()


# ------------------------------------------------------------- (g) '%' in inherited help text
_HELP_FORMAT = re.compile(r"%%|%\([^)]*\)[-#0 +]*\d*(?:\.\d+)?[a-zA-Z]|%")


def escape_help_percents(parser) -> None:
    """Escape bare ``%`` in the help strings of ``parser``'s arguments (in place).

    argparse %-formats help text; megatron-core 0.19.2 builds some help from docstrings with a
    literal ``%`` (``--moe-paged-stash-buffer-size-factor-cuda``: "10%)"), so ``--help``
    raises "unsupported format character". ``%%`` and ``%(name)s`` placeholders are kept.
    """
    for action in parser._actions:
        if isinstance(action.help, str) and "%" in action.help:
            action.help = _HELP_FORMAT.sub(lambda m: "%%" if m[0] == "%" else m[0], action.help)
