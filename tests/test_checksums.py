"""sedd_megatron.checksums: manifests written atomically, every kind of difference caught and
named, the manifest-less note printed once; save_pretrained / load_pretrained / open_model
(plain) through them."""

import json
import shutil

import pytest
import xxhash

from sedd_megatron import checksums
from sedd_megatron.errors import CheckpointError
from tests.conftest import CONFORMANCE_DIR


def flip_bit(path, offset=None):
    """Flip one bit of ``path`` (in its middle by default)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "ckpt"
    (root / "sub").mkdir(parents=True)
    (root / "__0_0.distcp").write_bytes(bytes(range(256)) * 40000)  # > 2 chunks of 4 MiB
    (root / ".metadata").write_bytes(b"meta")
    (root / "sub" / "common.pt").write_bytes(b"")
    return root


def test_manifest_lists_every_file_with_size_and_hash(folder):
    path = checksums.write_manifest(folder)
    manifest = json.loads(path.read_text())
    entries = {e["path"]: e for e in manifest["files"]}
    assert set(entries) == {"__0_0.distcp", ".metadata", "sub/common.pt"}
    for name, entry in entries.items():
        data = (folder / name).read_bytes()
        assert entry["size"] == len(data)
        assert entry["xxh3_128"] == xxhash.xxh3_128(data).hexdigest()  # the independent truth
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # written atomically
    assert checksums.verify_directory(folder) is True


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: flip_bit(f / "__0_0.distcp"), r"__0_0\.distcp: checksum mismatch: its content"),
        (lambda f: flip_bit(f / ".metadata", 0), r"\.metadata: checksum mismatch"),
        (
            lambda f: (f / "__0_0.distcp").write_bytes((f / "__0_0.distcp").read_bytes()[:-1]),
            r"__0_0\.distcp: checksum mismatch: 10239999 bytes, sedd_checksums\.json records",
        ),
        (lambda f: (f / "sub" / "common.pt").unlink(), r"sub/common\.pt is missing"),
        (lambda f: (f / "sedd_checksums.json").write_text("{"), r"not a readable checksum"),
    ],
    ids=["flipped shard bit", "flipped metadata bit", "truncated", "missing", "bad manifest"],
)
def test_differences_are_one_error_naming_the_file(folder, damage, message):
    checksums.write_manifest(folder)
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        checksums.verify_directory(folder)


def test_missing_manifest_is_one_note_per_directory(folder, capsys):
    assert checksums.verify_directory(folder) is False
    assert checksums.verify_directory(folder) is False
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "has no sedd_checksums.json" in err[0] and str(folder) in err[0]


def test_save_pretrained_writes_a_manifest_and_load_checks_it(tmp_path, capsys, monkeypatch):
    from sedd_megatron.checkpoint import open_model
    from sedd_megatron.plain import SEDD

    monkeypatch.setattr(checksums, "_NOTED", set())  # the note is once per process: earlier tests

    model = SEDD.from_pretrained(CONFORMANCE_DIR / "tiny_absorb")  # published: no manifest
    assert "has no sedd_checksums.json" in capsys.readouterr().err
    out = model.save_pretrained(tmp_path / "saved")
    listed = {e["path"] for e in checksums.read_manifest(out)[1]}
    assert listed == {"config.json", "model.safetensors"}
    flip_bit(out / "model.safetensors", (out / "model.safetensors").stat().st_size - 3)
    with pytest.raises(CheckpointError, match=r"saved/model\.safetensors: checksum mismatch"):
        SEDD.from_pretrained(out)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: checksum mismatch"):
        open_model(out, "plain")
    open_model(out, "plain", verify_checksums=False)  # the last weight's low bits: loads


def test_verified_once_per_process_and_manifest(folder, monkeypatch):
    checksums.write_manifest(folder)
    assert checksums.verify_directory(folder)
    calls = []
    monkeypatch.setattr(checksums, "file_digest", lambda p, a: calls.append(p) or "0")
    assert checksums.verify_directory(folder)  # cached: not hashed again
    assert calls == []
    monkeypatch.undo()
    shutil.copy(folder / ".metadata", folder / "extra")
    checksums.write_manifest(folder)  # a new manifest is checked again
    monkeypatch.setattr(checksums, "file_digest", lambda p, a: calls.append(p) or "0")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        checksums.verify_directory(folder)
    assert calls


def test_a_sha256_manifest_is_verified_too(folder):
    import hashlib

    files = [
        {"path": n, "size": (folder / n).stat().st_size,
         "sha256": hashlib.sha256((folder / n).read_bytes()).hexdigest()}
        for n in checksums.checkpoint_files(folder)
    ]  # fmt: skip
    manifest = {"format": checksums.FORMAT, "algorithm": "sha256", "files": files}
    (folder / checksums.MANIFEST_NAME).write_text(json.dumps(manifest))
    assert checksums.verify_directory(folder)
    flip_bit(folder / ".metadata", 1)
    with pytest.raises(CheckpointError, match=r"\.metadata: checksum mismatch"):
        checksums.verify_directory(folder)


def _state():
    import torch

    g = torch.Generator().manual_seed(0)
    return {
        "big": torch.randn(3 << 18, generator=g),  # 3 MiB: hashed on the pool thread
        "half": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "ids": torch.arange(11),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }


def test_safetensors_hashed_while_written_equals_the_reread_manifest(tmp_path, monkeypatch):
    from safetensors.torch import save

    from sedd_megatron.plain.checkpoint import save_safetensors

    monkeypatch.setattr(checksums, "INLINE_BYTES", 1 << 16)  # several pool-hashed writes
    monkeypatch.setattr("sedd_megatron.plain.checkpoint.WRITE_CHUNK_BYTES", 1 << 20)
    state = _state()
    path = tmp_path / "model.safetensors"
    save_safetensors(state, path, metadata={"format": "pt"})
    assert path.read_bytes() == save(state, metadata={"format": "pt"})  # the library's bytes

    reads = []
    original = checksums.file_digest
    monkeypatch.setattr(checksums, "file_digest", lambda p, *a: reads.append(p) or original(p))
    hashed = json.loads(checksums.write_manifest(tmp_path).read_text())
    assert reads == []  # taken while written: not read back
    reread = json.loads(checksums.write_manifest(tmp_path).read_text())  # digest consumed
    assert reads == [tmp_path / "model.safetensors"]
    assert hashed == reread
    assert hashed["files"][0]["xxh3_128"] == xxhash.xxh3_128(path.read_bytes()).hexdigest()

    checksums.write_manifest(tmp_path)
    flip_bit(path)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: checksum mismatch"):
        checksums.verify_directory(tmp_path)


def test_a_file_changed_after_it_was_hashed_is_read_again(tmp_path):
    import time

    with checksums.HashingWriter(tmp_path / "a.bin") as f:
        f.write(bytes(range(256)) * 8192)  # 2 MiB: hashed on the pool thread
    with checksums.HashingWriter(tmp_path / "b.bin") as f:  # moved about: not recorded
        f.write(b"x" * 100)
        f.seek(50)
        f.write(b"y" * 50)
        f.seek(150)
        f.write(b"z" * 10)  # as many bytes written as the file holds, in other places
    with checksums.HashingWriter(tmp_path / "c.bin") as f:  # cut: not recorded
        f.write(b"x" * 100)
        f.truncate(50)
        f.write(b"y" * 50)
    time.sleep(0.05)  # past the file system's timestamp granularity
    flip_bit(tmp_path / "a.bin")  # same size, new content
    entries = json.loads(checksums.write_manifest(tmp_path).read_text())["files"]
    for entry in entries:
        data = (tmp_path / entry["path"]).read_bytes()
        assert entry["xxh3_128"] == xxhash.xxh3_128(data).hexdigest()
    assert checksums.verify_directory(tmp_path)


def test_save_pretrained_reads_back_only_the_config(tmp_path, monkeypatch):
    from sedd_megatron.plain import SEDD

    model = SEDD.from_pretrained(CONFORMANCE_DIR / "tiny_absorb", verify_checksums=False)
    reads = []
    original = checksums.file_digest
    monkeypatch.setattr(checksums, "file_digest", lambda p, *a: reads.append(p.name) or original(p))
    out = model.save_pretrained(tmp_path / "saved", pytorch_bin=True)
    assert reads == ["config.json"]
    monkeypatch.undo()
    checksums._VERIFIED.clear()
    assert checksums.verify_directory(out)
    assert SEDD.from_pretrained(out).config == model.config


def test_digests_kept_are_bounded_and_the_rest_read_again(tmp_path, monkeypatch):
    monkeypatch.setattr(checksums, "MAX_WRITTEN", 2)
    monkeypatch.setattr(checksums, "_WRITTEN", {})
    for name in "abc":
        with checksums.HashingWriter(tmp_path / name) as f:
            f.write(name.encode() * 10)
    assert [p.rsplit("/", 1)[-1] for p in checksums._WRITTEN] == ["b", "c"]  # a, the oldest, gone
    entries = json.loads(checksums.write_manifest(tmp_path).read_text())["files"]
    assert [e["xxh3_128"] for e in entries] == [
        xxhash.xxh3_128(n.encode() * 10).hexdigest() for n in "abc"
    ]
