"""Atomic writes: the target gets all of the new content or keeps the old, and no temporary
file or directory is left behind either way."""

import os
import stat

import pytest

from sedd_megatron.atomic import (
    atomic_directory,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    temporary_sibling,
)


class Boom(Exception):
    pass


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_text_and_bytes_create_and_replace(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "first\n")
    assert target.read_text() == "first\n"
    atomic_write_text(target, "zweite Zeile: ü\n", fsync=True)
    assert target.read_text(encoding="utf-8") == "zweite Zeile: ü\n"
    atomic_write_bytes(tmp_path / "out.bin", b"\x00\xff")
    assert (tmp_path / "out.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.txt"]


def test_newline_and_permissions(tmp_path):
    atomic_write_text(tmp_path / "crlf.txt", "a\r\nb\n", newline="")
    assert (tmp_path / "crlf.txt").read_bytes() == b"a\r\nb\n"
    atomic_write_text(tmp_path / "private.txt", "x", permissions=0o600)
    assert _mode(tmp_path / "private.txt") == 0o600
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "default.txt", "x")
    assert _mode(tmp_path / "default.txt") == 0o666 & ~umask  # as open(path, "w") makes it


@pytest.fixture
def umask_027():
    """The process umask set to 027 (group: no write; others: nothing) for one test."""
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_new_files_and_directories_follow_the_umask(tmp_path, umask_027):
    """0666 / 0777 less the umask, as open() and mkdir make them: not mkstemp's owner-only
    0600 (nor a fixed 0755), also when an existing target with another mode is replaced."""
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_bytes(tmp_path / "b.bin", b"x")
    with atomic_open(tmp_path / "c.txt") as f:
        f.write("x")
    for name in ("a.txt", "b.bin", "c.txt"):
        assert _mode(tmp_path / name) == 0o640, name
    old = tmp_path / "old.txt"
    old.write_text("old")
    os.chmod(old, 0o600)
    atomic_write_text(old, "new")
    assert _mode(old) == 0o640
    with atomic_directory(tmp_path / "model") as staging:
        assert _mode(staging) == 0o750
        (staging / "config.json").write_text("{}")
    assert _mode(tmp_path / "model") == 0o750
    assert _mode(tmp_path / "model" / "config.json") == 0o640
    with atomic_directory(tmp_path / "exact", permissions=0o700):
        pass
    assert _mode(tmp_path / "exact") == 0o700
    os.umask(0)
    atomic_write_text(tmp_path / "open.txt", "x")
    assert _mode(tmp_path / "open.txt") == 0o666


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_open(target) as f:
            f.write("half of the new")
            raise Boom
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic_open(tmp_path / "new.bin", "wb") as f:
            f.write(b"partial")
            raise Boom
    assert list(tmp_path.iterdir()) == []


def test_atomic_open_only_writes(tmp_path):
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
        with atomic_open(tmp_path / "x", "a"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_renames_what_the_caller_wrote(tmp_path):
    target = tmp_path / "data.idx"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".data.idx.")
        assert tmp.name.endswith(".tmp") and not tmp.exists()
        tmp.write_text("new")
        assert target.read_text() == "old"  # not yet published
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["data.idx"]


def test_atomic_path_failure_removes_the_temporary(tmp_path):
    target = tmp_path / "data.bin"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise Boom
    with pytest.raises(KeyboardInterrupt):  # BaseException as well; and a directory
        with atomic_path(target) as tmp:
            (tmp / "sub").mkdir(parents=True)
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_temporary_siblings_are_hidden_and_distinct(tmp_path):
    names = {temporary_sibling(tmp_path / "f.txt") for _ in range(100)}
    assert len(names) == 100
    assert all(n.parent == tmp_path and n.name.startswith(".f.txt.") for n in names)


def test_atomic_directory_new_and_replaced(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        assert staging.is_dir() and staging.parent == tmp_path and staging.name.startswith(".")
        (staging / "config.json").write_text("{}")
        assert not target.exists()
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(target) == 0o777 & ~umask
    with atomic_directory(target) as staging:
        (staging / "weights.bin").write_bytes(b"w")
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]  # replaced whole
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_directory_failure_keeps_the_old_directory(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("old")
    with pytest.raises(Boom):
        with atomic_directory(target) as staging:
            (staging / "config.json").write_text("new")
            raise Boom
    assert (target / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with pytest.raises(Boom):
        with atomic_directory(tmp_path / "fresh"):
            raise Boom
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
