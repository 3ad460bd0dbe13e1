"""Weights-only failures are classified by what failed, not by torch's wording (safe_load).

Each crafted pickle would create ``PWNED`` if unpickled for real; the corrupt files are seeded
random bytes behind a pickle header, as a torn copy or a bad disk would leave them.
"""

import ast
import io
import pickle
from pathlib import Path

import pytest
import torch

from sedd_megatron import safe_load
from sedd_megatron.errors import CheckpointError
from sedd_megatron.plain.checkpoint import read_state_dict
from tests.bad_inputs.cases_checkpoint import PWNED, Touch, random_bytes

REPO = Path(__file__).resolve().parents[1]


def evil_zip(tmp_path) -> Path:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": Touch(tmp_path / PWNED)}, path)
    return path


def evil_legacy(tmp_path) -> Path:
    path = tmp_path / "evil_legacy.pt"
    payload = {"w": torch.ones(2), "x": Touch(tmp_path / PWNED)}
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    return path


def test_malicious_files_are_refused_naming_the_global(tmp_path):
    for path in (evil_zip(tmp_path), evil_legacy(tmp_path)):
        with pytest.raises(CheckpointError, match=r"refusing to load .*: it needs the Python "):
            safe_load.load_weights_only(path)
        assert safe_load.scan_pickle(path)[0] == "refused"
    assert not (tmp_path / PWNED).exists()
    torch.load(evil_zip(tmp_path), weights_only=False)  # the payload is live
    assert (tmp_path / PWNED).exists()


def test_random_bytes_are_corrupt_not_malicious(tmp_path):
    path = tmp_path / "model_optim_rng.pt"
    path.write_bytes(random_bytes())
    with pytest.raises(pickle.UnpicklingError):  # torch's own verdict: "weights only failed"
        torch.load(path, weights_only=True)
    with pytest.raises(CheckpointError) as info:
        safe_load.load_weights_only(path)
    assert "is not a readable PyTorch checkpoint (truncated or corrupt: " in str(info.value)
    assert "needs" not in str(info.value) and "refusing" not in str(info.value)


def test_stack_global_pickle_is_refused(tmp_path):
    path = tmp_path / "p4.pkl"
    path.write_bytes(pickle.dumps({"x": Touch(tmp_path / PWNED)}, protocol=4))
    verdict, name = safe_load.scan_pickle(path)
    assert verdict == "refused" and name in ("getattr", "pathlib.Path.touch")
    assert not (tmp_path / PWNED).exists()


def test_real_checkpoints_scan_clean(tmp_path):
    for zipped in (True, False):
        path = tmp_path / f"ok{zipped}.pt"
        torch.save({"w": torch.ones(3), "n": 3}, path, _use_new_zipfile_serialization=zipped)
        assert safe_load.scan_pickle(path) == ("clean", "")
        assert safe_load.scan_pickle(io.BytesIO(path.read_bytes())) == ("clean", "")


@pytest.mark.parametrize("wording", ["", "Weights only load failed", "something torch 3 says"])
def test_classification_ignores_the_message_text(tmp_path, wording):
    """Whatever torch's message says, a refusal is named and random bytes are corrupt."""
    err = pickle.UnpicklingError(wording)
    refused, reason = safe_load.weights_only_failure(err, evil_zip(tmp_path))
    assert refused and "it needs the Python global " in reason
    bad = tmp_path / "bad.pt"
    bad.write_bytes(random_bytes())
    refused, reason = safe_load.weights_only_failure(err, bad)
    assert not refused and reason
    assert safe_load.weights_only_failure(RuntimeError("PytorchStreamReader failed"), bad) == (
        False,
        "PytorchStreamReader failed",
    )


def test_plain_bin_refusal_gives_the_reason(tmp_path):
    """The issue's wording drift: the refusal of a malicious pytorch_model.bin says why."""
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(2), "x": Touch(tmp_path / PWNED)}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*it needs the Python global"):
        read_state_dict(path)
    path.write_bytes(random_bytes())
    with pytest.raises(CheckpointError, match=r"not a readable PyTorch checkpoint \(truncated"):
        read_state_dict(path)
    assert not (tmp_path / PWNED).exists()


def _package_imports(path: Path) -> set[str]:
    """The sedd_megatron modules ``path`` imports (anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sedd_megatron"):
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sedd_megatron")}
    return found


def test_safe_loading_has_one_home_below_its_users():
    """safe_load imports only the base floor; runtime and plain import no higher floor."""
    base = {"sedd_megatron.errors", "sedd_megatron.atomic", "sedd_megatron.safe_load",
            "sedd_megatron.checksums"}  # fmt: skip

    def floor(name: str) -> bool:
        return any(name == b or name.startswith(b + ".") for b in base)

    assert _package_imports(REPO / "sedd_megatron/safe_load.py") <= {
        "sedd_megatron.errors.CheckpointError"
    }
    for package in ("runtime", "plain"):
        for path in (REPO / "sedd_megatron" / package).rglob("*.py"):
            above = {
                n
                for n in _package_imports(path)
                if not floor(n)
                and not n.startswith(f"sedd_megatron.{package}")
                and not (package == "plain" and n.startswith("sedd_megatron.diffusion"))
            }
            assert not above, f"{path.relative_to(REPO)} imports a higher floor: {above}"
