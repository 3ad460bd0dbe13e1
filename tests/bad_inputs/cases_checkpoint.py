"""Bad-input cases of the area "checkpoint": checkpoints that try to run code, broken
torch_dist checkpoints (tracker, metadata, shards), NaN/Inf weights and a flipped bit (caught
by the checksum manifest), through pretrain_sedd.py --load, generate_sedd.py,
convert_checkpoint.py export/import/verify and eval_elbo_sedd.py.

The crafted checkpoints come with a matching checksum manifest (:func:`rehashed`: whoever hands
out a crafted file can hash it too), so the checks behind the manifest are what they meet.

The helpers below craft the broken copies (also used by tests/checkpoint/test_safety.py):
every crafted pickle, if it were unpickled for real, would create ``PWNED`` in the case's
directory (the runner fails a case where that file appears).
"""

from __future__ import annotations

import io
import pathlib
import pickle
import random
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from sedd_megatron import checksums
from tests.bad_inputs import Case

TRACKER = "latest_checkpointed_iteration.txt"
PWNED = "PWNED"

# tiny_absorb's architecture as pretrain flags (see TINY_ABSORB in tests/checkpoint/conftest.py)
PRETRAIN = (
    "pretrain_sedd.py", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
    "--seq-length", "32", "--max-position-embeddings", "32", "--sedd-cond-dim", "32",
    "--sedd-graph", "absorb", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000",
    "--micro-batch-size", "2", "--global-batch-size", "2", "--mock-data", "--lr", "1e-3",
    "--lr-warmup-iters", "0", "--train-iters", "1", "--eval-iters", "0", "--load", "{tmp}/ckpt",
)  # fmt: skip


class Touch:
    """Pickles as a call of ``pathlib.Path.touch(path)``: unpickling it creates ``path``."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


# ------------------------------------------------------------------------------ crafting
def copy_megatron(tmp: Path, fixtures: dict[str, Path]) -> Path:
    """A copy of the shared torch_dist checkpoint at ``tmp/ckpt``."""
    target = tmp / "ckpt"
    shutil.copytree(fixtures["megatron"], target)
    return target


def iteration_dir(ckpt: Path) -> Path:
    text = (ckpt / TRACKER).read_text().strip()
    return ckpt / ("release" if text == "release" else f"iter_{int(text):07d}")


def read_metadata(folder: Path):
    with open(folder / ".metadata", "rb") as f:
        return pickle.load(f)  # our own freshly written fixture copy: trusted


def write_metadata(folder: Path, metadata) -> None:
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(metadata, f)


def replace_items(folder: Path, edit) -> list[str]:
    """Re-store items of a torch_dist iteration: ``edit(fqn, data: bytes)`` returns new bytes
    (appended to the shard, the metadata pointed at them) or None to keep the item."""
    metadata = read_metadata(folder)
    done = []
    for index, info in list(metadata.storage_data.items()):
        shard = folder / info.relative_path
        with open(shard, "rb") as f:
            f.seek(info.offset)
            data = f.read(info.length)
        new = edit(index.fqn, data)
        if new is None:
            continue
        offset = shard.stat().st_size
        with open(shard, "ab") as f:
            f.write(new)
        info.offset, info.length = offset, len(new)
        done.append(index.fqn)
    assert done, "nothing was edited"
    write_metadata(folder, metadata)
    return done


def evil_metadata(tmp: Path, fixtures: dict[str, Path], nested: bool = False) -> None:
    """``.metadata`` whose unpickling would create PWNED (``nested``: inside real metadata)."""
    folder = iteration_dir(copy_megatron(tmp, fixtures))
    payload = Touch(tmp / PWNED)
    if nested:
        metadata = read_metadata(folder)
        metadata.planner_data = {"x": payload}
        payload = metadata
    (folder / ".metadata").write_bytes(pickle.dumps(payload))


def evil_common_state(tmp: Path, fixtures: dict[str, Path]) -> None:
    """The common state (Megatron's args) stored in the shard replaced by a payload."""
    folder = iteration_dir(copy_megatron(tmp, fixtures))

    def edit(fqn, data):
        if not fqn.startswith("common_state"):
            return None
        buffer = io.BytesIO()
        torch.save([{"args": Touch(tmp / PWNED)}], buffer)
        return buffer.getvalue()

    if not any(i.fqn.startswith("common_state") for i in read_metadata(folder).storage_data):
        # megatron-core 0.18 keeps the common state in common.pt, not in the shards
        torch.save([{"args": Touch(tmp / PWNED)}], folder / "common.pt")
        return
    replace_items(folder, edit)


def poison_weight(tmp: Path, fixtures: dict[str, Path], key: str = "sigma_map.mlp.0.bias"):
    """The raw and EMA copies of ``key`` get a NaN (and an Inf)."""
    folder = iteration_dir(copy_megatron(tmp, fixtures))

    def edit(fqn, data):
        if fqn not in (key, f"ema.{key}"):
            return None
        tensor = torch.load(io.BytesIO(data), weights_only=True).clone()
        tensor.view(-1)[0] = float("nan")
        tensor.view(-1)[-1] = float("inf")
        buffer = io.BytesIO()
        torch.save(tensor, buffer)
        return buffer.getvalue()

    replace_items(folder, edit)


def poison_plain(tmp: Path, fixtures: dict[str, Path], key: str = "blocks.1.mlp.0.bias"):
    """A copy of the plain fixture at ``tmp/plain`` whose ``key`` holds a NaN (saved with its
    checksum manifest: the file is what was saved, the weights are bad)."""
    from safetensors.torch import load_file, save_file

    target = tmp / "plain"
    target.mkdir()
    shutil.copy(fixtures["plain"] / "config.json", target)
    weights = load_file(fixtures["plain"] / "model.safetensors")
    weights[key] = weights[key].clone()
    weights[key].view(-1)[3] = float("nan")
    save_file(weights, target / "model.safetensors")
    checksums.write_manifest(target)


def truncate_shard(tmp: Path, fixtures: dict[str, Path]) -> None:
    shard = iteration_dir(copy_megatron(tmp, fixtures)) / "__0_0.distcp"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])


def remove_shard(tmp: Path, fixtures: dict[str, Path]) -> None:
    (iteration_dir(copy_megatron(tmp, fixtures)) / "__0_0.distcp").unlink()


def remove_metadata(tmp: Path, fixtures: dict[str, Path]) -> None:
    (iteration_dir(copy_megatron(tmp, fixtures)) / ".metadata").unlink()


def truncate_metadata(tmp: Path, fixtures: dict[str, Path]) -> None:
    metadata = iteration_dir(copy_megatron(tmp, fixtures)) / ".metadata"
    data = metadata.read_bytes()
    metadata.write_bytes(data[: len(data) // 3])


def tracker(text: str):
    def setup(tmp: Path, fixtures: dict[str, Path]) -> None:
        (copy_megatron(tmp, fixtures) / TRACKER).write_text(text)

    return setup


def legacy_checkpoint(tmp: Path, content: bytes | None) -> Path:
    """A ``--ckpt-format torch`` release checkpoint at ``tmp/ckpt``: ``content`` as its
    model_optim_rng.pt (None: a torch.save of an object whose unpickling creates PWNED)."""
    folder = tmp / "ckpt" / "release" / "mp_rank_00"
    folder.mkdir(parents=True)
    (tmp / "ckpt" / TRACKER).write_text("release")
    path = folder / "model_optim_rng.pt"
    if content is None:
        torch.save({"iteration": 0, "args": Touch(tmp / PWNED)}, path)
    else:
        path.write_bytes(content)
    return path


def legacy_evil(tmp: Path, fixtures: dict[str, Path]) -> None:
    legacy_checkpoint(tmp, None)


def legacy_corrupt(tmp: Path, fixtures: dict[str, Path]) -> None:
    legacy_checkpoint(tmp, b"PK\x03\x04 this is no checkpoint" * 10)


def random_bytes(size: int = 4096, seed: int = 22) -> bytes:
    """Seeded random bytes behind a pickle protocol-2 header (torch reads them as a legacy
    pickle, and its weights-only unpickler refuses the first unknown opcode)."""
    return b"\x80\x02" + random.Random(seed).randbytes(size)


def legacy_random(tmp: Path, fixtures: dict[str, Path]) -> None:
    legacy_checkpoint(tmp, random_bytes())


def plain_with_bin(content: bytes | None):
    """The plain fixture at ``tmp/plain`` with ``content`` as its only weights file,
    pytorch_model.bin (None: a state dict whose unpickling creates PWNED)."""

    def setup(tmp: Path, fixtures: dict[str, Path]) -> None:
        shutil.copytree(fixtures["plain"], tmp / "plain")
        (tmp / "plain" / "model.safetensors").unlink()
        path = tmp / "plain" / "pytorch_model.bin"
        if content is None:
            torch.save({"vocab_embed.embedding": torch.zeros(2), "x": Touch(tmp / PWNED)}, path)
        else:
            path.write_bytes(content)

    return setup


def rehashed(setup):
    """``setup``, then a fresh checksum manifest for every directory of the case that has one."""
    if setup is None:
        return None

    def wrapped(tmp: Path, fixtures: dict[str, Path]) -> None:
        setup(tmp, fixtures)
        for manifest in tmp.rglob(checksums.MANIFEST_NAME):
            checksums.write_manifest(manifest.parent)

    return wrapped


def flipped_shard(tmp: Path, fixtures: dict[str, Path]) -> None:
    """A copy of the pretrain_sedd.py checkpoint at ``tmp/ckpt`` with one bit of its shard
    flipped (in the middle: tensor data; the file stays structurally valid)."""
    target = shutil.copytree(fixtures["trained"], tmp / "ckpt")
    flip_middle_bit(target / "iter_0000002" / "__0_0.distcp")


def flipped_safetensors(tmp: Path, fixtures: dict[str, Path]) -> None:
    target = shutil.copytree(fixtures["plain"], tmp / "plain")
    flip_middle_bit(target / "model.safetensors")


def flip_middle_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------- cases
GENERATE = ("tools/generate_sedd.py", "--load", "{tmp}/ckpt", "--no-detokenize", "--num-samples",
            "1", "--steps", "2", "--no-progress")  # fmt: skip
EXPORT = ("tools/convert_checkpoint.py", "export", "--load", "{tmp}/ckpt", "--out", "{tmp}/out")
EVAL = ("tools/eval_elbo_sedd.py", "--load", "{tmp}/ckpt", "--data", "{data}", "--blocks", "1",
        "--num-t-samples", "2", "--no-progress")  # fmt: skip
FLIPPED = r"iter_0000002/__0_0\.distcp: checksum mismatch: its content differs"
REFUSED = r"refusing to load .*\.metadata: it needs the Python global pathlib\.Path\.touch"
REFUSED_COMMON = (
    r"refusing to load .*(__0_0\.distcp: its item common_state\S*|common\.pt: it) needs the "
    r"Python global (getattr|pathlib)"
)
NAN = r"the weight \S*sigma_map\.mlp\.0\.bias holds NaN or Inf"

CASES = [
    # pretrain_sedd.py --load
    Case(
        "pretrain --load: empty tracker file",
        PRETRAIN,
        r"latest_checkpointed_iteration\.txt is empty",
        setup=tracker(""),
    ),
    Case(
        "pretrain --load: corrupt tracker file",
        PRETRAIN,
        r"does not name an iteration \(it holds 'it3r'",
        setup=tracker("it3r\n"),
    ),
    Case(
        "pretrain --load: tracker names a missing iteration",
        PRETRAIN,
        r"names iter_0000007, but .*iter_0000007 does not exist",
        setup=tracker("7"),
    ),
    Case("pretrain --load: .metadata runs code", PRETRAIN, REFUSED, setup=evil_metadata),
    Case(
        "pretrain --load: common state runs code", PRETRAIN, REFUSED_COMMON, setup=evil_common_state
    ),
    Case(
        "pretrain --load: truncated shard",
        PRETRAIN,
        r"__0_0\.distcp is truncated: \d+ bytes",
        setup=truncate_shard,
    ),
    Case(
        "pretrain --load: missing .metadata",
        PRETRAIN,
        r"\.metadata is missing",
        setup=remove_metadata,
    ),
    Case(
        "pretrain --load: legacy torch checkpoint runs code",
        PRETRAIN,
        r"refusing to load .*model_optim_rng\.pt: it needs the Python global (getattr|pathlib)",
        setup=legacy_evil,
    ),
    Case(
        "pretrain --load: corrupt legacy torch checkpoint",
        PRETRAIN,
        r"model_optim_rng\.pt is not a readable PyTorch checkpoint",
        setup=legacy_corrupt,
    ),
    Case(
        "pretrain --load: legacy torch checkpoint of random bytes",
        (*PRETRAIN, "--ckpt-format", "torch"),
        r"model_optim_rng\.pt is not a readable PyTorch checkpoint \(truncated or corrupt: ",
        setup=legacy_random,
    ),
    # generate_sedd.py
    Case("generate: .metadata runs code", GENERATE, REFUSED, setup=evil_metadata),
    Case("generate: common state runs code", GENERATE, REFUSED_COMMON, setup=evil_common_state),
    Case("generate: missing shard", GENERATE, r"__0_0\.distcp is missing", setup=remove_shard),
    Case("generate: NaN in the Megatron weights", GENERATE, NAN, setup=poison_weight),
    Case(
        "generate: NaN in the plain weights",
        GENERATE[:2] + ("{tmp}/plain",) + GENERATE[3:],
        r"model\.safetensors: the weight blocks\.1\.mlp\.0\.bias holds NaN or Inf",
        setup=poison_plain,
    ),
    Case(
        "generate: pytorch_model.bin runs code",
        GENERATE[:2] + ("{tmp}/plain",) + GENERATE[3:],
        r"refusing to load .*pytorch_model\.bin: it needs the Python global (getattr|pathlib)",
        setup=plain_with_bin(None),
    ),
    Case(
        "generate: pytorch_model.bin of random bytes",
        GENERATE[:2] + ("{tmp}/plain",) + GENERATE[3:],
        r"pytorch_model\.bin is not a readable PyTorch checkpoint \(truncated or corrupt: ",
        setup=plain_with_bin(random_bytes()),
    ),
    # convert_checkpoint.py export
    Case(
        "export: .metadata runs code (inside real metadata)",
        EXPORT,
        REFUSED,
        setup=lambda tmp, fixtures: evil_metadata(tmp, fixtures, nested=True),
    ),
    Case("export: truncated shard", EXPORT, r"__0_0\.distcp is truncated", setup=truncate_shard),
    Case(
        "export: truncated .metadata",
        EXPORT,
        r"\.metadata is not readable torch_dist metadata \(truncated or corrupt",
        setup=truncate_metadata,
    ),
    Case("export: NaN in the weights", EXPORT, NAN, setup=poison_weight),
    # eval_elbo_sedd.py
    Case("eval: .metadata runs code", EVAL, REFUSED, setup=evil_metadata),
    Case("eval: missing shard", EVAL, r"__0_0\.distcp is missing", setup=remove_shard),
    Case("eval: NaN in the Megatron weights", EVAL, NAN, setup=poison_weight),
    Case(
        "eval: NaN in the plain weights",
        EVAL[:2] + ("{tmp}/plain",) + EVAL[3:],
        r"the weight blocks\.1\.mlp\.0\.bias holds NaN or Inf",
        setup=poison_plain,
    ),
]
CASES = [replace(case, setup=rehashed(case.setup)) for case in CASES]
CASES += [
    Case("pretrain --load: a flipped bit in a shard", PRETRAIN, FLIPPED, setup=flipped_shard),
    Case("generate: a flipped bit in a shard", GENERATE, FLIPPED, setup=flipped_shard),
    Case("eval: a flipped bit in a shard", EVAL, FLIPPED, setup=flipped_shard),
    Case("export: a flipped bit in a shard", EXPORT, FLIPPED, setup=flipped_shard),
    Case(
        "verify: a flipped bit in a shard",
        ("tools/convert_checkpoint.py", "verify", "--load", "{tmp}/ckpt"),
        FLIPPED,
        setup=flipped_shard,
    ),
    Case(
        "import: a flipped bit in model.safetensors",
        ("tools/convert_checkpoint.py", "import", "--load", "{tmp}/plain", "--out", "{tmp}/out"),
        r"plain/model\.safetensors: checksum mismatch",
        setup=flipped_safetensors,
    ),
]
