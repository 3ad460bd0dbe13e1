"""The places where SEDD training hooks into megatron.training.pretrain (0.19.2).

pretrain() has no callback after the optimizer step nor around evaluation, so
:func:`install_training_hooks` wraps two of its module-level functions, and makes one write
atomic:

- ``setup_model_and_optimizer``: the returned optimizer's ``step`` is wrapped so that every
  successful step updates the EMA weights (and appends to ``--sedd-metrics-file``); once the
  checkpoint is loaded, the metrics file is cut back to the iteration the run starts from, so
  the steps it re-runs after a restart appear once;
- ``evaluate``: runs with the EMA weights swapped in (unless ``--no-eval-with-ema``), so the
  validation loss is the ELBO estimate of the weights we export;
- the checkpoint tracker file (``latest_checkpointed_iteration.txt``): Megatron truncates and
  rewrites it in place, so a kill at that moment leaves an empty tracker and the next run exits
  ("Invalid metadata file"). It is now written to a temporary name, fsynced and renamed;
  just before, the checksum manifest of the iteration it names is written
  (``sedd_megatron.checksums``). Megatron writes the tracker on rank 0 once every rank's files
  are complete (after a barrier, or in the finalize step of an ``--async-save``), so the
  manifest covers the whole iteration directory. The torch_dist shard files a synchronous save
  writes in this process are hashed while they are written (``hash_megatron_shard_writes``),
  so the manifest re-reads only the small files, other ranks' shards and an ``--async-save``
  worker's shards.

- ``OptimizerParamScheduler._check_and_set``: a learning-rate schedule that differs from the
  checkpoint's is a ConfigError naming Megatron's two flags that resolve it (Megatron asserts,
  with a traceback).

The wrappers call the original functions unchanged; nothing else in Megatron is altered.
"""

import contextlib
import functools
import io
import os
import time

import torch

from sedd_megatron.atomic import atomic_write_text
from sedd_megatron.checksums import hash_megatron_shard_writes, write_manifest
from sedd_megatron.errors import ConfigError
from sedd_megatron.models.sedd.ema import find_ema
from sedd_megatron.safe_load import TRACKER_NAME
from sedd_megatron.training.metrics import STEP_METRICS, append_jsonl, truncate_jsonl
from sedd_megatron.training.resume import scheduler_mismatch_message

_INSTALLED = {"done": False}
#: What this process saw: per-step training records and validation losses (nats/token).
HISTORY = {"train": [], "valid": []}
#: The model chunks pretrain() trained (set by the wrapped setup_model_and_optimizer).
TRAINED = {"model": None}


_EVAL_PREFIX = {"value": ""}  # what evaluate_and_print_results is evaluating ("... test set")


def _record_validation(result, args) -> None:
    total_loss_dict = result[0] if isinstance(result, tuple) else result
    loss = (total_loss_dict or {}).get("lm loss")
    if loss is not None:
        split = "test" if "test set" in _EVAL_PREFIX["value"] else "valid"
        iterations = args.curr_iteration + 1  # optimizer steps done when it was evaluated
        record = {"iteration": iterations, "loss": float(loss), "split": split}
        # the in-loop evaluation at the last step and the one after training see the same
        # weights (with different batches): keep the later one
        last = HISTORY["valid"][-1] if HISTORY["valid"] else {}
        if (last.get("iteration"), last.get("split")) == (iterations, split):
            HISTORY["valid"].pop()
        HISTORY["valid"].append(record)


def _emas(model_chunks):
    return [e for e in (find_ema(chunk) for chunk in model_chunks) if e is not None]


def _wrap_optimizer_step(optimizer, model_chunks, args):
    original_step = optimizer.step
    emas = _emas(model_chunks)

    @functools.wraps(original_step)
    def step(*a, **kw):
        result = original_step(*a, **kw)
        update_successful, grad_norm = result[0], result[1]
        step_number = args.curr_iteration + 1  # optimizer steps done, counting this one
        if update_successful:
            for ema in emas:
                ema.update(step_number)
        device = next(model_chunks[0].parameters()).device
        record = {
            "iteration": step_number,
            "loss": STEP_METRICS.global_loss(device),
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "lr": optimizer.param_groups[0]["lr"] if optimizer.param_groups else None,
            "update_successful": bool(update_successful),
        }
        STEP_METRICS.reset()
        HISTORY["train"].append({**record, "time": time.time()})
        if args.sedd_metrics_file and torch.distributed.get_rank() == 0:
            append_jsonl(args.sedd_metrics_file, record)
        return result

    optimizer.step = step


class _AtomicTrackerStorage:
    """Megatron's ``maybe_msc`` storage shim, with atomic writes of the tracker file."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def open(self, path, mode="r", *args, **kwargs):
        local = "://" not in str(path)
        if mode == "w" and local and os.path.basename(str(path)) == TRACKER_NAME:
            return _tracker_write(str(path))  # Megatron writes it in a with block
        return self._inner.open(path, mode, *args, **kwargs)


@contextlib.contextmanager
def _tracker_write(path: str):
    """Collect the tracker's text; then write the named iteration's checksum manifest and
    the tracker itself (atomically, fsynced)."""
    buffer = io.StringIO()
    yield buffer
    text = buffer.getvalue()
    name = text.strip()
    folder = None
    if name == "release":
        folder = os.path.join(os.path.dirname(path), "release")
    elif name.isdigit():
        folder = os.path.join(os.path.dirname(path), f"iter_{int(name):07d}")
    if folder is not None and os.path.isdir(folder):
        write_manifest(folder)
    atomic_write_text(path, text, fsync=True)


def _atomic_tracker_open(inner):
    """``open_file`` (megatron-core 0.18) with atomic writes of the tracker file."""

    @functools.wraps(inner)
    def open_file(path, mode="r", *args, **kwargs):
        local = "://" not in str(path)
        if mode == "w" and local and os.path.basename(str(path)) == TRACKER_NAME:
            return _tracker_write(str(path))  # Megatron writes it in a with block
        return inner(path, mode, *args, **kwargs)

    return open_file


def _install_atomic_tracker(mc) -> None:
    """Atomic tracker writes wherever this Megatron opens the tracker: ``maybe_msc.open``
    (megatron-core 0.19) or ``open_file`` (0.18); one clear error if neither is there."""
    if hasattr(mc, "maybe_msc"):
        mc.maybe_msc = _AtomicTrackerStorage(mc.maybe_msc)
    elif hasattr(mc, "open_file"):
        mc.open_file = _atomic_tracker_open(mc.open_file)
    else:
        from sedd_megatron.runtime.upstream_fixes import upstream_versions  # lazy: a message

        raise RuntimeError(
            f"atomic checkpoint tracker writes do not fit {upstream_versions()}: "
            "megatron.training.checkpointing has neither maybe_msc nor open_file"
        )


def install_training_hooks() -> None:
    """Wrap megatron.training.training's setup_model_and_optimizer and evaluate (idempotent)."""
    if _INSTALLED["done"]:
        return
    from megatron.training import checkpointing as mc
    from megatron.training import get_args
    from megatron.training import training as mt

    _install_atomic_tracker(mc)
    hash_megatron_shard_writes()
    _wrap_scheduler_check()

    original_setup = mt.setup_model_and_optimizer
    original_evaluate = mt.evaluate

    @functools.wraps(original_setup)
    def setup_model_and_optimizer(*a, **kw):
        model, optimizer, scheduler = original_setup(*a, **kw)
        TRAINED["model"] = model
        args = get_args()
        if args.sedd_metrics_file and torch.distributed.get_rank() == 0:
            truncate_jsonl(args.sedd_metrics_file, args.iteration)  # set by load_checkpoint
        if optimizer is not None:
            _wrap_optimizer_step(optimizer, model, args)
        return model, optimizer, scheduler

    @functools.wraps(original_evaluate)
    def evaluate(forward_step_func, data_iterator, model, *a, **kw):
        args = get_args()
        emas = _emas(model) if args.eval_with_ema else []
        if not emas:
            result = original_evaluate(forward_step_func, data_iterator, model, *a, **kw)
            _record_validation(result, args)
            return result
        with _all_swapped(emas):
            result = original_evaluate(forward_step_func, data_iterator, model, *a, **kw)
        _record_validation(result, args)
        return result

    original_evaluate_and_print = mt.evaluate_and_print_results

    @functools.wraps(original_evaluate_and_print)
    def evaluate_and_print_results(prefix, *a, **kw):
        _EVAL_PREFIX["value"] = str(prefix)
        try:
            return original_evaluate_and_print(prefix, *a, **kw)
        finally:
            _EVAL_PREFIX["value"] = ""

    mt.setup_model_and_optimizer = setup_model_and_optimizer
    mt.evaluate = evaluate
    mt.evaluate_and_print_results = evaluate_and_print_results
    _INSTALLED["done"] = True


def _wrap_scheduler_check() -> None:
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    original = OptimizerParamScheduler._check_and_set

    @functools.wraps(original)
    def _check_and_set(self, cls_value, sd_value, name):
        try:
            return original(self, cls_value, sd_value, name)
        except AssertionError:
            raise ConfigError(scheduler_mismatch_message(name, cls_value, sd_value)) from None

    OptimizerParamScheduler._check_and_set = _check_and_set


@contextlib.contextmanager
def _all_swapped(emas):
    with contextlib.ExitStack() as stack:
        for ema in emas:
            stack.enter_context(ema.swapped_in())
        yield
