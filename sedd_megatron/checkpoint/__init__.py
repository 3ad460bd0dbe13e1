"""Loading and converting SEDD checkpoints: pretrain_sedd.py (Megatron) <-> published layout.

Most callers want :func:`open_model` (a ``ScoreModel``: the plain twin, or SEDDModel in the
caller's world), which sampling, evaluation and the tools share. Underneath it, the contract of
:func:`load_sedd_model`:

    with sedd_megatron.runtime.world(tp=T, pp=P):   # the entry point; torchrun, T*P*DP ranks
        model, info = load_sedd_model(source, iteration=None, use_ema=None, seq_length=None)

- ``source`` is a pretrain_sedd.py checkpoint directory (the tracker's latest iteration, or
  ``iteration``; an ``iter_NNNNNNN``/``release`` directory also works) or a directory in the
  published ``louaaron/sedd-*`` layout (config.json + model.safetensors / pytorch_model.bin).
- The architecture (graph, noise, sizes, vocabulary) comes from the checkpoint: the saved
  Megatron args, or config.json. The model is this rank's pipeline stage of a float32
  ``SEDDModel`` with local (non Transformer Engine) layers at the *current* TP/PP (checkpoints
  are resharded by dist_checkpointing; plain weights go through the state-dict adapter), in
  eval mode, on the current CUDA device (CPU under the CPU runtime), without an ``ema`` child.
- Weights: ``use_ema=None`` loads the EMA weights when the checkpoint has them, else the raw
  ones; ``True`` requires EMA weights (CheckpointError otherwise); ``False`` loads the raw
  weights. Optimizer state is never read. Plain sources hold one set of weights (``info.ema``
  is None: the published files do not say which).
- ``info`` (:class:`SEDDModelInfo`): ``config`` (published-layout SEDDConfig), ``graph``,
  ``num_tokens``, ``noise_type``, ``sigma_min``, ``sigma_max``, ``seq_length`` (``seq_length``
  or the training length), ``source``, ``source_kind`` ("megatron" | "plain"), ``iteration``,
  ``ema``.
- Bad input raises :class:`CheckpointError` (a ValueError) with one clear message: missing,
  empty or incomplete checkpoint, unreadable tracker, key/shape mismatch, unknown graph,
  a pickle that needs more than ``weights_only`` loading, a file that differs from the
  checkpoint's checksum manifest (``sedd_checksums.json``; ``verify_checksums=False`` skips it).

Conversions (each writes a new directory atomically; see their docstrings):
:func:`export_checkpoint` (Megatron -> published layout) and :func:`import_checkpoint`
(published layout -> Megatron release checkpoint at a chosen TP/PP).
"""

from sedd_megatron.checkpoint.export import ExportResult, export_checkpoint
from sedd_megatron.checkpoint.importer import ImportResult, import_checkpoint
from sedd_megatron.checkpoint.loader import SEDDModelInfo, build_model, load_sedd_model
from sedd_megatron.checkpoint.locate import (
    CheckpointIteration,
    find_iteration,
    is_plain_dir,
    read_checkpoint_args,
    read_plain_checkpoint,
    source_kind,
    verify_checksums,
)
from sedd_megatron.checkpoint.opener import open_model, resolve_backend
from sedd_megatron.checkpoint.verify import compare
from sedd_megatron.errors import CheckpointError

__all__ = [
    "CheckpointError",
    "CheckpointIteration",
    "ExportResult",
    "ImportResult",
    "SEDDModelInfo",
    "build_model",
    "compare",
    "export_checkpoint",
    "find_iteration",
    "import_checkpoint",
    "is_plain_dir",
    "load_sedd_model",
    "open_model",
    "read_checkpoint_args",
    "read_plain_checkpoint",
    "resolve_backend",
    "source_kind",
    "verify_checksums",
]
