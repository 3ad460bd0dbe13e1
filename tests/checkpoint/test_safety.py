"""Checkpoints cannot run code, and broken ones are one clear CheckpointError (checkpoint.safety).

Every crafted pickle here would create ``PWNED`` if it were unpickled for real; each test also
shows that its payload is live (plain unpickling does create the file), so it can fail.
"""

import io
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sedd_megatron.checkpoint import find_iteration, locate, safety
from sedd_megatron.checkpoint.loader import check_finite_weights
from sedd_megatron.errors import CheckpointError
from sedd_megatron.plain import SEDD
from sedd_megatron.plain.checkpoint import first_non_finite
from sedd_megatron.runtime.upstream_fixes import apply_upstream_fixes
from tests.bad_inputs import cases_checkpoint as craft
from tests.checkpoint.conftest import convert
from tests.conftest import CONFORMANCE_DIR

FORCE_NO = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    """tiny_absorb imported as a torch_dist checkpoint (as the bad-input table's fixture)."""
    megatron = tmp_path_factory.mktemp("safety") / "megatron"
    convert("import", "--plain", str(CONFORMANCE_DIR / "tiny_absorb"), "--out", str(megatron))
    return {"megatron": megatron, "plain": CONFORMANCE_DIR / "tiny_absorb"}


def crafted(tmp_path, fixtures, setup) -> Path:
    """Run a crafting helper of the bad-input table; returns the iteration directory."""
    setup(tmp_path, fixtures)
    return craft.iteration_dir(tmp_path / "ckpt")


def assert_live(tmp_path, load) -> None:
    """The payload runs when unpickled for real (so the refusal above was a real test)."""
    assert not (tmp_path / craft.PWNED).exists()
    load()
    assert (tmp_path / craft.PWNED).exists()


# ----------------------------------------------------------------------------- .metadata
def test_real_checkpoint_metadata_reads_with_the_allowlist(fixtures):
    folder = craft.iteration_dir(fixtures["megatron"])
    trusted = craft.read_metadata(folder)  # plain pickle: our own fresh checkpoint
    metadata = safety.read_metadata(folder)
    assert metadata.state_dict_metadata == trusted.state_dict_metadata
    assert metadata.storage_data == trusted.storage_data
    assert any(k.startswith("common_state") for k in metadata.state_dict_metadata)
    assert safety.check_load_dir(fixtures["megatron"]) == folder
    assert locate.saved_tensor_keys(find_iteration(fixtures["megatron"])) == set(
        trusted.state_dict_metadata
    )


@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "inside-real-metadata"])
def test_metadata_that_runs_code_is_refused(tmp_path, fixtures, nested):
    folder = crafted(tmp_path, fixtures, lambda t, f: craft.evil_metadata(t, f, nested=nested))
    message = rf"refusing to load {folder / '.metadata'}: .*global pathlib\.Path\.touch"
    with pytest.raises(CheckpointError, match=message):
        safety.read_metadata(folder)
    with pytest.raises(CheckpointError, match=message):
        safety.check_load_dir(tmp_path / "ckpt")
    apply_upstream_fixes(["safe_checkpoint_reads"])  # torch's own reader, as Megatron uses it
    from torch.distributed.checkpoint import FileSystemReader

    with pytest.raises(CheckpointError, match=message):
        FileSystemReader(str(folder)).read_metadata()
    assert_live(tmp_path, lambda: pickle.loads((folder / ".metadata").read_bytes()))


def test_patched_torch_reader_still_reads_real_metadata(fixtures):
    apply_upstream_fixes(["safe_checkpoint_reads"])
    from torch.distributed.checkpoint import FileSystemReader

    reader = FileSystemReader(str(craft.iteration_dir(fixtures["megatron"])))
    metadata = reader.read_metadata()
    assert metadata.storage_meta.load_id == reader.load_id
    assert "embedding.word_embeddings.weight" in metadata.state_dict_metadata


@pytest.mark.parametrize(
    "setup, message",
    [
        (craft.remove_metadata, r"\.metadata is missing"),
        (craft.truncate_metadata, r"\.metadata is not readable torch_dist metadata \(truncated"),
        (craft.truncate_shard, r"__0_0\.distcp is truncated: \d+ bytes, but .* needs \d+"),
        (craft.remove_shard, r"__0_0\.distcp is missing: .* is incomplete"),
    ],
    ids=["no .metadata", "truncated .metadata", "truncated shard", "missing shard"],
)
def test_broken_torch_dist_directory_is_one_clear_error(tmp_path, fixtures, setup, message):
    folder = crafted(tmp_path, fixtures, setup)
    with pytest.raises(CheckpointError, match=message):
        safety.check_dcp_dir(folder)
    with pytest.raises(
        CheckpointError, match=message.replace(r"\.metadata is missing", r"no \.metadata")
    ):
        locate.read_common_state(find_iteration(tmp_path / "ckpt"))


def test_shard_paths_outside_the_checkpoint_are_refused(tmp_path, fixtures):
    folder = crafted(tmp_path, fixtures, craft.copy_megatron)
    metadata = craft.read_metadata(folder)
    next(iter(metadata.storage_data.values())).relative_path = "../../outside.distcp"
    craft.write_metadata(folder, metadata)
    with pytest.raises(CheckpointError, match="'../../outside.distcp', outside the checkpoint"):
        safety.check_dcp_dir(folder)


# ------------------------------------------------------------- pickled items in the shards
def test_common_state_that_runs_code_is_refused(tmp_path, fixtures, monkeypatch):
    folder = crafted(tmp_path, fixtures, craft.evil_common_state)
    monkeypatch.setenv(FORCE_NO, "1")  # a user's override must not reopen the hole
    with pytest.raises(CheckpointError, match=r"its item common_state\S* needs the Python global"):
        safety.check_dcp_dir(folder)
    with pytest.raises(CheckpointError, match="refusing to load"):
        locate.read_common_state(find_iteration(tmp_path / "ckpt"))
    # Megatron's own reader (no preflight) with the fix: torch's load_bytes is weights-only
    apply_upstream_fixes(["safe_checkpoint_reads"])
    from megatron.core import dist_checkpointing

    with pytest.raises(BaseException) as raised:  # torch's CheckpointException around it
        dist_checkpointing.load_common_state_dict(str(folder))
    causes = [exc for exc, _ in raised.value.failures.values()]
    assert any(isinstance(c, CheckpointError) and "common_state" in str(c) for c in causes)
    with pytest.raises(CheckpointError, match="refusing to load the checkpoint item common_st"):
        with locate.safe_megatron_reads(folder):  # the same, as one clear error
            dist_checkpointing.load_common_state_dict(str(folder))
    assert os.environ[FORCE_NO] == "1"

    def unpickle_for_real():
        metadata = craft.read_metadata(folder)
        for index, info in metadata.storage_data.items():
            if index.fqn.startswith("common_state"):
                with open(folder / info.relative_path, "rb") as f:
                    f.seek(info.offset)
                    torch.load(io.BytesIO(f.read(info.length)), weights_only=False)

    assert_live(tmp_path, unpickle_for_real)


def test_real_common_state_still_loads(fixtures, monkeypatch):
    monkeypatch.setenv(FORCE_NO, "1")
    args = locate.read_common_state(find_iteration(fixtures["megatron"]))["args"]
    assert args.sedd_graph == "absorb" and args.num_layers == 2


# ------------------------------------------------------------------ tracker and legacy files
@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty"),
        ("\n \n", "is empty"),
        ("it3r", r"does not name an iteration \(it holds 'it3r'"),
        ("-4", "does not name an iteration"),
        ("\u0663", "does not name an iteration"),  # a non-ASCII digit
        ("12", r"names iter_0000012, but .*iter_0000012 does not exist"),
    ],
)
def test_bad_tracker_is_one_clear_error(tmp_path, fixtures, text, message):
    crafted(tmp_path, fixtures, craft.copy_megatron)
    (tmp_path / "ckpt" / craft.TRACKER).write_text(text)
    with pytest.raises(CheckpointError, match=message):
        safety.check_load_dir(tmp_path / "ckpt")


def test_load_dir_without_tracker_and_ckpt_step(tmp_path, fixtures):
    assert safety.check_load_dir(tmp_path / "nothing-yet") is None  # --load = --save, first run
    crafted(tmp_path, fixtures, craft.copy_megatron)
    (tmp_path / "ckpt" / "release").rename(tmp_path / "ckpt" / "iter_0000005")
    (tmp_path / "ckpt" / craft.TRACKER).write_text("5")
    assert safety.check_load_dir(tmp_path / "ckpt") == tmp_path / "ckpt" / "iter_0000005"
    with pytest.raises(CheckpointError, match=r"--ckpt-step 3 names iter_0000003, but"):
        safety.check_load_dir(tmp_path / "ckpt", 3)
    assert safety.check_load_dir(tmp_path / "ckpt", 5) == tmp_path / "ckpt" / "iter_0000005"


def test_legacy_torch_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv(FORCE_NO, "1")
    path = craft.legacy_checkpoint(tmp_path, None)
    with pytest.raises(CheckpointError, match=r"refusing to load .*model_optim_rng\.pt: it needs"):
        safety.check_load_dir(tmp_path / "ckpt")
    assert_live(tmp_path, lambda: torch.load(path, weights_only=False))

    torch.save({"iteration": 3, "model": {"w": torch.ones(2)}}, path)
    assert safety.check_load_dir(tmp_path / "ckpt") == tmp_path / "ckpt" / "release"
    assert safety.load_weights_only(path, mmap=True)["iteration"] == 3
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="model_optim_rng.pt is empty"):
        safety.check_load_dir(tmp_path / "ckpt")
    path.write_bytes(b"\x80\x02}q\x00")  # a cut-off pickle
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint"):
        safety.check_load_dir(tmp_path / "ckpt")
    path.unlink()
    with pytest.raises(CheckpointError, match="mp_rank_\\* directories but no .pt files"):
        safety.check_load_dir(tmp_path / "ckpt")


def test_weights_only_loads_forces_and_restores(tmp_path, monkeypatch):
    monkeypatch.setenv(FORCE_NO, "1")
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    path = tmp_path / "evil.pt"
    torch.save({"x": craft.Touch(tmp_path / craft.PWNED)}, path)
    with safety.weights_only_loads():
        assert os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1" and FORCE_NO not in os.environ
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=False)  # Megatron's style of call: forced anyway
    assert os.environ[FORCE_NO] == "1" and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    assert_live(tmp_path, lambda: torch.load(path, weights_only=False))


# --------------------------------------------------------------------------------- NaN/Inf
def test_non_finite_weights_are_named(tmp_path):
    assert first_non_finite([("a", torch.ones(2)), ("i", torch.arange(3))]) is None
    tensors = [("a", torch.ones(2)), ("b", torch.tensor([1.0, float("inf")])),
               ("c", torch.tensor([float("nan")]))]  # fmt: skip
    assert first_non_finite(tensors) == "b"
    craft.poison_plain(tmp_path, {"plain": CONFORMANCE_DIR / "tiny_absorb"})
    poisoned = load_file(tmp_path / "plain" / "model.safetensors")["blocks.1.mlp.0.bias"]
    assert torch.isnan(poisoned).any()
    message = r"model\.safetensors: the weight blocks\.1\.mlp\.0\.bias holds NaN or Inf"
    with pytest.raises(CheckpointError, match=message):
        SEDD.from_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointError, match=message):
        locate.read_plain_checkpoint(tmp_path / "plain")
    SEDD.from_pretrained(CONFORMANCE_DIR / "tiny_absorb")  # the untouched model loads


def test_non_finite_megatron_parameter_is_named():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    check_finite_weights(model, "ckpt")
    with torch.no_grad():
        model[1].bias[0] = float("-inf")
    with pytest.raises(CheckpointError, match=r"ckpt: the weight 1\.bias holds NaN or Inf"):
        check_finite_weights(model, "ckpt")
