"""The up-front checks of the data tools' library: output paths, sizes, tokenizer files and
flags, Megatron indexed datasets read without Megatron (against Megatron's own reader)."""

import argparse
import json

import numpy as np
import pytest

from sedd_megatron.datasets.checks import check_int, check_output_dir, check_output_file
from sedd_megatron.datasets.corpus import check_corpus_settings
from sedd_megatron.datasets.gpt2_bpe import read_encoder, read_merges
from sedd_megatron.datasets.indexed import (
    check_token_ids,
    read_index,
    read_tokens,
    token_id_range,
)
from sedd_megatron.datasets.preprocess import preprocess
from sedd_megatron.datasets.tokenizers import (
    add_tokenizer_args,
    build_tokenizer,
    check_tokenizer_args,
    default_gpt2_files,
)
from sedd_megatron.errors import DataError


def test_check_int():
    check_int(3, "--n")
    check_int(None, "--n", optional=True)
    check_int(0, "--n", minimum=0)
    with pytest.raises(DataError, match=r"^--n must be positive, got 0$"):
        check_int(0, "--n")
    with pytest.raises(DataError, match=r"--n must be non-negative, got -1"):
        check_int(-1, "--n", minimum=0)
    with pytest.raises(DataError, match=r"--n must be >= 2, got 1"):
        check_int(1, "--n", minimum=2)
    with pytest.raises(DataError, match="must be an integer"):
        check_int(2.5, "--n")
    with pytest.raises(DataError, match="must be an integer"):
        check_int(True, "--n")


def test_output_paths(tmp_path):
    (tmp_path / "file").write_text("x")
    check_output_file(tmp_path / "new.json", "--output")
    check_output_file(tmp_path / "file", "--output")  # replaced atomically
    with pytest.raises(DataError, match="is a directory"):
        check_output_file(tmp_path, "--output")
    with pytest.raises(DataError, match=r"directory .*/file does not exist"):
        check_output_file(tmp_path / "file" / "x.json", "--output")
    check_output_dir(tmp_path / "a" / "b", "--out-dir")  # created with its parents
    check_output_dir(tmp_path, "--out-dir")
    with pytest.raises(DataError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "file", "--out-dir")
    with pytest.raises(DataError, match=r"cannot create .*: .*/file is not a directory"):
        check_output_dir(tmp_path / "file" / "sub" / "dir", "--out-dir")


def _megatron_dataset(prefix, docs, dtype=np.uint16):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in docs:
        builder.add_document(np.asarray(doc, dtype=dtype), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def test_indexed_reader_matches_megatron(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 60000, int(rng.integers(1, 50))) for _ in range(30)]
    prefix = tmp_path / "d"
    _megatron_dataset(prefix, docs)
    reference = IndexedDataset(str(prefix))
    expected = np.concatenate([reference.get(i) for i in range(len(reference))]).astype(np.int64)
    stream, sequences = read_tokens(prefix)
    assert sequences == 30 and stream.tolist() == expected.tolist()
    assert read_index(prefix).documents == len(reference.document_indices) - 1 == 30
    assert token_id_range(prefix) == (int(expected.min()), int(expected.max()))
    part, n = read_tokens(prefix, max_tokens=len(docs[0]) + 1)
    assert n == 2 and part.tolist() == expected[: len(docs[0]) + len(docs[1])].tolist()
    check_token_ids(prefix, int(expected.max()) + 1)
    with pytest.raises(DataError, match=rf"token ids in \[\d+, {expected.max()}\], outside"):
        check_token_ids(prefix, int(expected.max()))
    # only the tokens to be used are checked
    small = tmp_path / "small"
    _megatron_dataset(small, [[1, 2, 3], [5000, 1]])
    check_token_ids(small, 100, max_tokens=3)
    with pytest.raises(DataError, match="outside the vocabulary of 100"):
        check_token_ids(small, 100, max_tokens=4)


def test_broken_indexed_datasets(tmp_path):
    prefix = tmp_path / "d"
    _megatron_dataset(prefix, [[1, 2, 3, 4]] * 5)
    idx, binary = (tmp_path / "d.idx").read_bytes(), (tmp_path / "d.bin").read_bytes()
    (tmp_path / "d.idx").write_bytes(idx[:-20])
    with pytest.raises(DataError, match=r"d\.idx: truncated index"):
        read_index(prefix)
    (tmp_path / "d.idx").write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match="bad header"):
        read_index(prefix)
    (tmp_path / "d.idx").write_bytes(b"MMI")
    with pytest.raises(DataError, match="too short"):
        read_index(prefix)
    (tmp_path / "d.idx").write_bytes(idx)
    (tmp_path / "d.bin").write_bytes(binary[:-2])
    with pytest.raises(DataError, match=r"d\.bin: \d+ bytes, but its index points to byte"):
        read_index(prefix)
    (tmp_path / "d.bin").unlink()
    with pytest.raises(DataError, match=r"not found: .*d\.bin"):
        read_index(prefix)


def test_gpt2_files_are_checked(tmp_path):
    vocab, merges = default_gpt2_files()
    encoder = read_encoder(vocab)
    ranks = read_merges(merges, encoder)
    assert len(encoder) == 50257 and max(ranks.values()) == 49999 and ranks[("Ġ", "t")] == 0
    bad = tmp_path / "bad.json"
    for text, message in [
        ("not json", r"bad\.json is not valid JSON"),
        ("[1]", "must be a non-empty JSON object"),
        ('{"a": 0, "b": 0}', r"the ids must be 0 \.\. 1, each once"),
        ('{"a": "0"}', "every id must be an integer"),
        ('{"a": 0}', "lacks 255 of the 256 byte tokens"),
    ]:
        bad.write_text(text)
        with pytest.raises(DataError, match=message):
            read_encoder(str(bad))
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match=r"bad\.json is not UTF-8 text"):
        read_encoder(str(bad))
    bad.write_text("#version: 0.2\nĠ t\nthree parts here\n")
    with pytest.raises(DataError, match=r"bad\.json:3: .* line is two symbols"):
        read_merges(str(bad), encoder)
    bad.write_text("zzzz qqqq\n")
    with pytest.raises(DataError, match=r"bad\.json:1: merge 'zzzz qqqq' gives a token"):
        read_merges(str(bad), encoder)
    bad.write_text("#version: 0.2\n\n")
    with pytest.raises(DataError, match="holds no merges"):
        read_merges(str(bad), encoder)


def test_garbage_tokenizer_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(bytes(range(256)) * 4)
    vocab, merges = default_gpt2_files()
    with pytest.raises(DataError, match=r"vocab file \(encoder\.json\) .*garbage is not UTF-8"):
        build_tokenizer("gpt2", vocab_file=str(garbage), merges_file=merges)
    with pytest.raises(DataError, match=r"merges file \(vocab\.bpe\) .*garbage is not UTF-8"):
        build_tokenizer("gpt2", vocab_file=vocab, merges_file=str(garbage))
    with pytest.raises(DataError, match=r"sentencepiece model .*garbage cannot be read"):
        build_tokenizer("sentencepiece", model_file=str(garbage))
    with pytest.raises(DataError, match="is not a Hugging Face tokenizer directory"):
        build_tokenizer("huggingface", path=str(tmp_path))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": "nonsense"}))
    with pytest.raises(DataError, match=r"cannot read the tokenizer file .*tokenizer\.json"):
        build_tokenizer("huggingface", path=str(tmp_path))


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_tokenizer_args(parser)
    return parser.parse_args(argv)


def test_tokenizer_flags(tmp_path):
    model = tmp_path / "sp.model"
    model.write_text("x")
    check_tokenizer_args(_args())
    check_tokenizer_args(_args("--tokenizer", "sentencepiece", "--tokenizer-model", str(model)))
    for argv, message in [
        (("--vocab-file", str(model)), "needs both --vocab-file"),
        (("--vocab-file", "x", "--merge-file", "y"), "--vocab-file: tokenizer file not found: x"),
        (("--tokenizer-model", str(model)), "--tokenizer-model is for --tokenizer sentencepiece"),
        (("--eos-token", "</s>"), "--eos-token is for"),
        (("--tokenizer", "sentencepiece"), "--tokenizer sentencepiece needs --tokenizer-model"),
        (
            ("--tokenizer", "sentencepiece", "--tokenizer-model", str(model), "--merge-file", "m"),
            "--merge-file is for --tokenizer gpt2",
        ),
        (
            ("--tokenizer", "sentencepiece", "--tokenizer-model", str(tmp_path / "no")),
            "sentencepiece model not found",
        ),
        (
            ("--tokenizer", "huggingface", "--tokenizer-model", str(model)),
            "Hugging Face tokenizer directory not found",
        ),
    ]:
        with pytest.raises(DataError, match=message):
            check_tokenizer_args(_args(*argv))


class Bytes:
    """A toy tokenizer: UTF-8 bytes, eos 256."""

    kind, spec, vocab_size, eos_id = "bytes", {}, 257, 256

    def encode(self, text):
        return list(text.encode())


def test_preprocess_settings_and_outputs_fail_before_work(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("hello")
    for kwargs, message in [
        (dict(workers=0), "workers must be positive, got 0"),
        (dict(encoding="klingon"), "unknown text encoding 'klingon'"),
        (dict(json_keys=[]), "give one or more non-empty JSON keys"),
        (dict(json_keys=["a", "a"]), "a key is named twice"),
    ]:
        with pytest.raises(DataError, match=message):
            preprocess([src], tmp_path / "out", Bytes(), progress=False, **kwargs)
    (tmp_path / "out.idx").mkdir()
    with pytest.raises(DataError, match=r"output: .*out\.idx is a directory"):
        preprocess([src], tmp_path / "out", Bytes(), progress=False)
    (tmp_path / "a.bin").write_text("x")
    with pytest.raises(DataError, match=r"output .*a\.bin is also an input file"):
        preprocess([tmp_path / "a.bin"], tmp_path / "a", Bytes(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.txt", "out.idx"]


def test_corpus_settings(tmp_path):
    (tmp_path / "file").write_text("x")
    check_corpus_settings(tmp_path / "new", sources=["ptb"])
    for kwargs, message in [
        (dict(max_train_bytes=-5), "max_train_bytes must be positive, got -5"),
        (dict(max_train_bytes=0), "max_train_bytes must be positive, got 0"),
        (dict(workers=0), "workers must be positive"),
        (dict(sources=["kjv"]), "sources must include 'ptb'"),
    ]:
        with pytest.raises(DataError, match=message):
            check_corpus_settings(tmp_path / "c", **{"sources": ["ptb"], **kwargs})
    with pytest.raises(DataError, match="exists and is not a directory"):
        check_corpus_settings(tmp_path / "file", sources=["ptb"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "train.bin").mkdir()
    with pytest.raises(DataError, match=r"train\.bin is a directory"):
        check_corpus_settings(tmp_path / "c", sources=["ptb"])


def test_merges_starting_with_hash_are_merges(gpt2):
    """vocab.bpe holds merges such as ``# #``: only the ``#version`` header is skipped (the
    reference: Hugging Face's GPT2Tokenizer over the same files)."""
    transformers = pytest.importorskip("transformers")
    reference = transformers.GPT2Tokenizer(*default_gpt2_files())
    for text in ("### Title ## sub #include <x>", "a ## b ### c #### d", "#$ money"):
        assert gpt2.encode(text) == reference.encode(text)
    assert gpt2.encode("###") == [21017]
