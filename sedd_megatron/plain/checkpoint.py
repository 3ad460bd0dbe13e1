"""Reading and writing SEDD checkpoints in the published Hugging Face layout (local files only).

A checkpoint directory holds ``config.json`` (SEDDConfig.to_dict) and the reference state dict
as ``model.safetensors`` and/or ``pytorch_model.bin``. Pickles are only read with
``weights_only=True``; keys and shapes are checked strictly against layout.py, and weights
holding NaN or Inf are refused (:func:`check_finite`). :func:`save_pretrained` also writes the
checksum manifest ``sedd_checksums.json`` and :func:`load_pretrained` checks it first
(``sedd_megatron.checksums``); the weights are hashed while they are written
(:func:`save_safetensors`), so the manifest does not read them back.
"""

import json
import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sedd_megatron import checksums
from sedd_megatron.atomic import atomic_directory
from sedd_megatron.errors import CheckpointError
from sedd_megatron.safe_load import weights_only_failure

from .config import SEDDConfig
from .layout import ROTARY_INV_FREQ, check_state_dict, rotary_inv_freq

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PYTORCH_BIN_NAME = "pytorch_model.bin"
WEIGHTS_NAMES = (SAFETENSORS_NAME, PYTORCH_BIN_NAME)  # in order of preference
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
WRITE_CHUNK_BYTES = 16 << 20


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write CPU ``tensors`` as a .safetensors file through a :class:`checksums.HashingWriter`.

    The bytes are the ones ``safetensors.torch.save`` gives (tensors ordered by element size,
    largest first, then name; compact JSON header padded with spaces to 8 bytes), written
    straight from the tensors' memory in chunks while a second thread hashes them.
    """
    for name, tensor in tensors.items():
        if tensor.dtype not in SAFETENSORS_DTYPES or tensor.device.type != "cpu":
            raise ValueError(f"{name}: cannot write a {tensor.dtype} tensor on {tensor.device}")
    names = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in names:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with checksums.HashingWriter(path) as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            flat = tensors[name].detach().contiguous().reshape(-1)
            data = memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else b""
            for start in range(0, len(data), WRITE_CHUNK_BYTES):
                f.write(data[start : start + WRITE_CHUNK_BYTES])


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a weights-only pickle (.bin/.pt), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt zip/pickle data raises several kinds of error
        refused, detail = weights_only_failure(err, path)
        if refused:
            raise CheckpointError(
                f"refusing to load {path}: {detail} (only weights_only loading is allowed; "
                "re-save the file as a plain dict of tensors)"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {detail})"
        ) from None
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        hint = ""
        if isinstance(state_dict, dict) and "model" in state_dict:
            hint = " (a training checkpoint? pass its 'model' or EMA weights instead)"
        raise CheckpointError(f"{path} does not hold a flat dict of name -> tensor{hint}")
    return state_dict


def first_non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an Inf, else None."""
    for name, tensor in tensors:
        if (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel():
            if not bool(torch.isfinite(tensor).all()):
                return name
    return None


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """CheckpointError naming the first tensor of ``state_dict`` (read from ``source``) that
    holds a NaN or an Inf: such weights must not be sampled, evaluated or exported from."""
    bad = first_non_finite(state_dict.items())
    if bad is not None:
        raise CheckpointError(
            f"{source}: the weight {bad} holds NaN or Inf values; refusing to use these weights"
        )


def find_weights_file(directory: Path, weights_name: str | None = None) -> Path:
    if weights_name is not None:
        if Path(weights_name).name != weights_name:
            raise CheckpointError(f"weights_name must be a file name, got {weights_name!r}")
        if not (directory / weights_name).is_file():
            raise CheckpointError(f"{directory} has no {weights_name}")
        return directory / weights_name
    for name in WEIGHTS_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory} has neither {SAFETENSORS_NAME} nor {PYTORCH_BIN_NAME}")


def load_pretrained(
    model_cls, path: str | Path, *, weights_name: str | None = None, verify_checksums=True
):
    """Build ``model_cls(config)`` from a local checkpoint directory, in eval mode, float32.

    With ``verify_checksums`` the directory's checksum manifest, if any, is checked first."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(
            f"{str(path)!r} is not a local directory (hub downloads are not supported)"
        )
    if not (directory / CONFIG_NAME).is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}")
    if verify_checksums:
        checksums.verify_directory(directory)
    config = SEDDConfig.from_json(directory / CONFIG_NAME)
    weights_file = find_weights_file(directory, weights_name)
    state_dict = read_state_dict(weights_file)
    try:
        check_state_dict(state_dict, config)
    except CheckpointError as err:
        raise CheckpointError(f"{weights_file} vs {CONFIG_NAME}: {err}") from err
    check_finite(state_dict, weights_file)
    state_dict = {k: v.to(torch.float32).contiguous() for k, v in state_dict.items()}
    state_dict.setdefault(ROTARY_INV_FREQ, rotary_inv_freq(config.head_dim, config.rotary_base))
    with torch.device("meta"):
        model = model_cls(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def save_pretrained(
    model, path: str | Path, *, safetensors=True, pytorch_bin=False, overwrite=False
) -> Path:
    """Write config.json + weights + the checksum manifest into a temporary sibling directory,
    then rename it to ``path``.

    An existing non-empty ``path`` is an error unless ``overwrite``; then it is replaced whole.
    """
    if not (safetensors or pytorch_bin):
        raise ValueError("nothing to write: set safetensors and/or pytorch_bin")
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty (pass overwrite=True)")
    state_dict = OrderedDict(
        (k, v.detach().to("cpu").contiguous()) for k, v in model.state_dict().items()
    )
    check_state_dict(state_dict, model.config, allow_missing_derived=False)

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target) as staging:
        model.config.to_json(staging / CONFIG_NAME)
        if safetensors:
            save_safetensors(state_dict, staging / SAFETENSORS_NAME, metadata={"format": "pt"})
        if pytorch_bin:
            with checksums.HashingWriter(staging / PYTORCH_BIN_NAME) as f:
                torch.save(state_dict, f)
        checksums.write_manifest(staging)  # reads back only config.json
    return target
