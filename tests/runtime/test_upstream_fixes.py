"""The device-independent upstream fixes: dataset helpers at start-up, foreach multi-tensor
ops, fused torch Adam (the distributed-optimizer fixes are tested in test_distopt_resume.py)."""

import megatron.core.datasets as mcore_datasets
import pytest
import torch

from sedd_megatron.runtime import upstream_fixes
from sedd_megatron.runtime.upstream_fixes import (
    DatasetHelpersError,
    foreach_l2_norm,
    foreach_scale,
    load_dataset_helpers,
    use_fused_adam,
)


def _fake_datasets_dir(monkeypatch, tmp_path, makefile: str | None):
    if makefile is not None:
        (tmp_path / "Makefile").write_text(makefile)
    monkeypatch.setattr(mcore_datasets, "__file__", str(tmp_path / "__init__.py"))


def test_wheel_without_makefile_uses_prebuilt_helpers(monkeypatch):
    def no_make(*args, **kwargs):
        raise AssertionError("make must not run where there is no Makefile")

    monkeypatch.setattr(upstream_fixes.subprocess, "run", no_make)
    load_dataset_helpers()  # the installed wheel: prebuilt helpers_cpp, no Makefile


def test_source_checkout_runs_make(monkeypatch, tmp_path):
    _fake_datasets_dir(monkeypatch, tmp_path, "all:\n\ttouch built\n")
    load_dataset_helpers()
    assert (tmp_path / "built").exists()


def test_failing_make_is_one_clear_error(monkeypatch, tmp_path):
    _fake_datasets_dir(monkeypatch, tmp_path, "all:\n\t@echo 'no compiler here' >&2; exit 3\n")
    with pytest.raises(DatasetHelpersError, match="no compiler here"):
        load_dataset_helpers()


def test_missing_helpers_and_no_makefile_is_one_clear_error(monkeypatch, tmp_path):
    _fake_datasets_dir(monkeypatch, tmp_path, None)

    def fail(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(upstream_fixes.importlib, "import_module", fail)
    with pytest.raises(DatasetHelpersError, match="reinstall megatron-core"):
        load_dataset_helpers()


def test_compile_helpers_is_replaced_on_every_device(monkeypatch):
    from megatron.core.datasets import utils

    monkeypatch.setattr(utils, "compile_helpers", utils.compile_helpers)  # undone after the test
    upstream_fixes.apply_upstream_fixes(["dataset_helpers"])
    assert getattr(utils.compile_helpers, "_sedd_upstream_fix", False)
    calls = []
    monkeypatch.setattr(upstream_fixes, "load_dataset_helpers", lambda: calls.append(1))
    utils.compile_helpers()  # what megatron.training's _compile_dependencies calls
    assert calls == [1]


def _tensors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (7,), (2, 3, 5), (1,)]
    return [torch.randn(s, generator=gen) for s in shapes]


def test_foreach_l2_norm_equals_float64_norm():
    tensors = _tensors()
    norm, per_tensor = foreach_l2_norm(2048, torch.zeros(1, dtype=torch.int), [tensors], False)
    expected = torch.cat([t.double().flatten() for t in tensors]).norm()
    assert norm.shape == (1,) and norm.dtype == torch.float32 and per_tensor is None
    assert abs(norm.item() - expected.item()) < 1e-6 * expected.item()
    empty, _ = foreach_l2_norm(2048, torch.zeros(1, dtype=torch.int), [[]], False)
    assert empty.item() == 0.0


def test_foreach_scale_in_place_and_copy():
    tensors = _tensors()
    expected = [t * 0.25 for t in tensors]
    foreach_scale(2048, None, [tensors, tensors], 0.25)  # clip_grads: [grads, grads]
    assert all(torch.equal(a, b) for a, b in zip(tensors, expected, strict=True))
    targets = [torch.empty_like(t, dtype=torch.bfloat16) for t in tensors]
    foreach_scale(2048, None, [tensors, targets], 1.0)  # copy main params to bf16 params
    assert all(torch.equal(t, s.bfloat16()) for t, s in zip(targets, tensors, strict=True))


def test_multi_tensor_fix_replaces_only_megatron_fallbacks(monkeypatch):
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as mcore_optimizer

    monkeypatch.setattr(clip_grads, "l2_norm_impl", utils.local_multi_tensor_l2_norm)
    monkeypatch.setattr(clip_grads, "multi_tensor_scale_impl", utils.local_multi_tensor_scale)
    monkeypatch.setattr(mcore_optimizer, "multi_tensor_scale_impl", print)  # "Apex's kernel"
    upstream_fixes.apply_upstream_fixes(["multi_tensor_ops"])
    assert clip_grads.l2_norm_impl is foreach_l2_norm
    assert clip_grads.multi_tensor_scale_impl is foreach_scale
    assert mcore_optimizer.multi_tensor_scale_impl is print


def _adam_run(fused: bool, steps: int = 5) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(t.clone()) for t in _tensors(1)]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    if fused:
        assert use_fused_adam(opt, device_types=("cpu",))
    assert bool(opt.param_groups[0]["fused"]) is fused
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach() for p in params]


def test_fused_adam_takes_the_same_steps():
    fused, plain = _adam_run(True), _adam_run(False)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_fused_adam_only_where_every_param_fits():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert not use_fused_adam(torch.optim.AdamW(params), device_types=("cuda",))
    assert not use_fused_adam(torch.optim.SGD(params, lr=0.1), device_types=("cpu",))
    opt = torch.optim.Adam(params)
    params[0].grad = torch.ones(3)
    opt.step()  # state exists: too late to switch kernels
    assert not use_fused_adam(opt, device_types=("cpu",))


def test_fused_adam_fix_wraps_megatron_optimizer_builder(monkeypatch):
    import megatron.core.optimizer as mcore_optim

    class Wrapped:  # a MegatronOptimizer holds the torch optimizer as .optimizer
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])

    monkeypatch.setattr(
        mcore_optim, "_get_megatron_optimizer_based_on_param_groups", lambda *a, **k: Wrapped()
    )
    monkeypatch.setattr(mcore_optim, "USING_PYTORCH_OPTIMIZER", True)
    seen = []
    monkeypatch.setattr(
        upstream_fixes, "use_fused_adam", lambda opt, devices: seen.append((opt, devices))
    )
    upstream_fixes.apply_upstream_fixes(["fused_adam"])
    monkeypatch.delenv(upstream_fixes.FUSED_ADAM_ON_CPU, raising=False)
    result = mcore_optim._get_megatron_optimizer_based_on_param_groups()
    assert isinstance(result, Wrapped) and seen == [(Wrapped.optimizer, ("cuda",))]
    monkeypatch.setenv(upstream_fixes.FUSED_ADAM_ON_CPU, "1")  # how the tests drive it on CPU
    mcore_optim._get_megatron_optimizer_based_on_param_groups()
    assert seen[-1] == (Wrapped.optimizer, ("cuda", "cpu"))


# ------------------------------------------------------------ (h) safe checkpoint reads
class _Touch:
    """Unpickling it creates ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_checkpoint_fix_patches_torch_and_megatron_once():
    from megatron.core.dist_checkpointing import serialization
    from megatron.core.dist_checkpointing.strategies import common
    from megatron.training import checkpointing
    from torch.distributed.checkpoint import default_planner, filesystem

    def patched():
        return [
            filesystem.FileSystemReader.read_metadata,
            default_planner.DefaultLoadPlanner.load_bytes,
            common.load_common,
            serialization.load_common,
            checkpointing.read_metadata,
            checkpointing._load_base_checkpoint,
        ]

    upstream_fixes.apply_upstream_fixes(["safe_checkpoint_reads"])
    first = patched()
    assert all(getattr(f, upstream_fixes._PATCHED_MARK, False) for f in first)
    upstream_fixes.apply_upstream_fixes(["safe_checkpoint_reads"])
    assert patched() == first  # idempotent: not wrapped twice


@pytest.mark.parametrize("text", ["", "abc", "-3"])
def test_bad_tracker_is_an_error_not_exit_0(tmp_path, text):
    from megatron.training import checkpointing

    from sedd_megatron.errors import CheckpointError

    upstream_fixes.apply_upstream_fixes(["safe_checkpoint_reads"])
    tracker = tmp_path / "latest_checkpointed_iteration.txt"
    tracker.write_text(text)
    with pytest.raises(CheckpointError, match="latest_checkpointed_iteration.txt"):
        checkpointing.read_metadata(str(tracker))
    tracker.write_text("release")
    assert checkpointing.read_metadata(str(tracker)) == (0, True)


def test_base_loader_is_weights_only_and_never_exits_0(tmp_path, monkeypatch):
    import argparse
    import os
    import sys

    from sedd_megatron.errors import CheckpointError

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    (tmp_path / "release" / "mp_rank_00").mkdir(parents=True)
    torch.save({"iteration": 0}, tmp_path / "release" / "mp_rank_00" / "model_optim_rng.pt")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("release")
    args = argparse.Namespace(non_persistent_ckpt_type=None, ckpt_step=None)
    seen = []

    def megatron_gives_up(load_dir, args, rank0=False):  # "could not load ..."; sys.exit()
        seen.append(dict(os.environ))
        sys.exit()

    load = upstream_fixes._checked_base_loader(megatron_gives_up)
    with pytest.raises(CheckpointError, match=r"cannot load the checkpoint .*release"):
        load(str(tmp_path), args, rank0=True)
    assert seen[0]["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1"
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in seen[0]
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored afterwards
    # preflight first: a crafted legacy file is refused before Megatron's loader runs
    evil = tmp_path / "release" / "mp_rank_00" / "model_optim_rng.pt"
    torch.save({"args": _Touch(tmp_path / "PWNED")}, evil)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load(str(tmp_path), args, rank0=True)
    assert len(seen) == 1 and not (tmp_path / "PWNED").exists()
    # no tracker: --exit-on-missing-checkpoint's deliberate exit stays an exit
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        load(str(empty), args)


def test_legacy_common_pt_is_weights_only(tmp_path, monkeypatch):
    from megatron.core.dist_checkpointing.strategies import common

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    upstream_fixes.apply_upstream_fixes(["safe_checkpoint_reads"])
    torch.save({"args": _Touch(tmp_path / "PWNED")}, tmp_path / "common.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        common.load_common(str(tmp_path))
    assert not (tmp_path / "PWNED").exists()
    torch.load(tmp_path / "common.pt", weights_only=False)  # the payload is live
    assert (tmp_path / "PWNED").exists()
