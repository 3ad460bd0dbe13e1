"""Output directories of the conversions: checked before any work, published whole or not at
all."""

import importlib
import os
import sys

import pytest

from sedd_megatron.checkpoint import rank0_writes
from sedd_megatron.errors import CheckpointError


def test_a_new_path_is_accepted_and_nothing_is_created(tmp_path):
    for path in (tmp_path / "out", tmp_path / "missing" / "parents" / "out"):
        assert rank0_writes.new_output_dir(path) == path
    assert list(tmp_path.iterdir()) == []  # the write probe leaves nothing


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p.mkdir(), r"already exists \(a directory\)"),
        (lambda p: p.write_text("x"), r"already exists \(a file\)"),
        (lambda p: p.symlink_to(p.parent / "nowhere"), r"already exists \(a link\)"),
    ],
)
def test_an_existing_output_is_refused(tmp_path, make, message):
    make(tmp_path / "out")
    with pytest.raises(CheckpointError, match=message):
        rank0_writes.new_output_dir(tmp_path / "out")


def test_bad_parents_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match=r"file is not a directory"):
        rank0_writes.new_output_dir(tmp_path / "file" / "a" / "out")
    with pytest.raises(CheckpointError, match=r"cannot write in /proc"):
        rank0_writes.new_output_dir("/proc/sedd_out")
    with pytest.raises(CheckpointError, match="empty"):
        rank0_writes.new_output_dir("")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_parent_is_refused(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(CheckpointError, match="cannot write in"):
        rank0_writes.new_output_dir(tmp_path / "ro" / "out")


def test_an_output_inside_the_source_is_refused(tmp_path):
    source = tmp_path / "ckpt"
    source.mkdir()
    for out in (source / "export", source / "a" / "b", tmp_path / "ckpt" / ".." / "ckpt" / "x"):
        with pytest.raises(CheckpointError, match="lies inside the source"):
            rank0_writes.new_output_dir(out, source=source)
    assert rank0_writes.new_output_dir(tmp_path / "ckpt_export", source=source)


def test_missing_parents_are_created_only_when_publishing(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    staging = tmp_path / ".out.staging"
    staging.mkdir()
    (staging / "f").write_text("done")
    rank0_writes._publish(staging, target)
    assert (target / "f").read_text() == "done" and not staging.exists()


def _convert_tool():
    return importlib.import_module("sedd_megatron.cli.convert")


def test_relaunch_reports_the_ranks_error_line_not_torchrun_traceback(capsys, monkeypatch):
    monkeypatch.setenv("SEDD_SHOW_WARNINGS", "1")  # loading the tool leaves warnings alone
    tool = _convert_tool()
    failing = "import sys; print({!r}, file=sys.stderr); sys.exit(1)"
    lines = "convert_checkpoint.py: error: boom\nTraceback (most recent call last): ...\n"
    with pytest.raises(SystemExit) as stop:
        tool._relaunch([sys.executable, "-c", failing.format(lines)])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "convert_checkpoint.py: error: boom\n"
    with pytest.raises(SystemExit) as stop:  # no rank said why: torchrun's output and status
        tool._relaunch([sys.executable, "-c", failing.format("Traceback: crash")])
    assert stop.value.code == 1 and "Traceback: crash" in capsys.readouterr().err
    tool._relaunch([sys.executable, "-c", "pass"])
