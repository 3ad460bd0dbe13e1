"""Each upstream fix is probed before it is applied: applied where its defect exists, skipped
where it does not, one clear line where the internal it patches moved, and the safety fix (h)
refuses loading instead of doing nothing. Run on every corner of the support matrix
(.ci/matrix.sh), this is the per-version record of which fix applies where."""

import pytest

from sedd_megatron.errors import CheckpointError
from sedd_megatron.runtime import upstream_fixes
from sedd_megatron.runtime.upstream_fixes import PROBES, FixMoved, apply_upstream_fixes, probe_fix


def test_every_fix_fits_this_version_and_is_applied_exactly_where_needed():
    needed = {name: probe_fix(name) for name in PROBES}  # FixMoved here: a version we don't fit
    apply_upstream_fixes()
    from megatron.core.datasets import utils
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from torch.distributed.checkpoint import filesystem

    mark = "_sedd_upstream_fix"
    patched = {
        "shared_step": getattr(DistributedOptimizer.load_state_dict, mark, False),
        "empty_state": getattr(DistributedOptimizer.state_dict, mark, False),
        "dataset_helpers": getattr(utils.compile_helpers, mark, False),
        "safe_checkpoint_reads": getattr(filesystem.FileSystemReader.read_metadata, mark, False),
    }
    for name, is_patched in patched.items():
        assert is_patched == needed[name], name
    for name in PROBES:
        assert upstream_fixes.FIX_STATUS[name] == ("applied" if needed[name] else "not needed")
    # the loading safety fix is needed on every supported torch (it reads with pickle.load)
    assert needed["safe_checkpoint_reads"]


def test_a_fixed_upstream_method_is_left_alone(monkeypatch):
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    def state_dict(self):  # an upstream that no longer asserts one step over empty states
        return {"optimizer": self.optimizer.state_dict()}

    monkeypatch.setattr(DistributedOptimizer, "state_dict", state_dict)
    assert probe_fix("empty_state") is False
    apply_upstream_fixes(["empty_state"])
    assert DistributedOptimizer.state_dict is state_dict
    assert upstream_fixes.FIX_STATUS["empty_state"] == "not needed"


def test_a_moved_internal_is_one_line_naming_the_fix_and_versions(monkeypatch, capsys):
    from megatron.core.optimizer import clip_grads

    monkeypatch.delattr(clip_grads, "l2_norm_impl")
    monkeypatch.setattr(upstream_fixes, "_TOLD", set())
    with pytest.raises(FixMoved, match="clip_grads.l2_norm_impl is gone"):
        probe_fix("multi_tensor_ops")
    apply_upstream_fixes(["multi_tensor_ops"])  # skipped, not an AttributeError later
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("sedd-megatron upstream fix (e) multi_tensor_ops does not fit ")
    assert "megatron-core 0." in err[0] and "torch 2." in err[0] and "skipped" in err[0]
    assert upstream_fixes.FIX_STATUS["multi_tensor_ops"] == "unavailable"


def test_the_safety_fix_refuses_loading_when_torch_reads_differently(monkeypatch):
    from torch.distributed.checkpoint import filesystem

    def read_metadata(self, *args, **kwargs):  # a torch that reads metadata some other way
        return None

    monkeypatch.setattr(filesystem.FileSystemReader, "read_metadata", read_metadata)
    with pytest.raises(CheckpointError) as err:
        apply_upstream_fixes(["safe_checkpoint_reads"])
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith("sedd-megatron upstream fix (h) safe_checkpoint_reads does not fit ")
    assert "no longer reads with pickle.load" in line and "refusing to load" in line
    assert filesystem.FileSystemReader.read_metadata is read_metadata  # nothing half-applied


def test_cpu_training_patch_names_a_moved_module_instead_of_skipping(monkeypatch):
    import sys

    from sedd_megatron.runtime import _megatron_cpu

    monkeypatch.setitem(sys.modules, "megatron.training.utils.common_utils", None)  # ImportError
    with pytest.raises(_megatron_cpu.CpuPatchError, match="training patch does not fit megatron"):
        _megatron_cpu._patch_training()
