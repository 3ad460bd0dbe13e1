"""SEDD datasets through BlendedMegatronDatasetBuilder: unshifted tokens-only windows that tile the
concatenated token stream, blends, splits, the index cache, mock data, and the args provider."""

from pathlib import Path

import numpy
import pytest
import torch

from sedd_megatron.datasets.sedd_dataset import (
    MockSEDDDataset,
    SEDDDataset,
    TokensOnly,
    build_sedd_datasets,
)
from tests.datasets.fixtures_data import EOS, write_dataset
from tests.launch import parse_result, run_python

SEQ = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    a, b = str(root / "a"), str(root / "b")
    return {"a": (a, write_dataset(a, 0, 40, seed=1)), "b": (b, write_dataset(b, 1000, 60, seed=2))}


def check_windows(ds: SEDDDataset, docs: list[list[int]], seq: int = SEQ) -> None:
    """Samples are the consecutive, non-overlapping, unshifted ``seq``-token windows of the
    stream of raw documents in the dataset's (shuffled, per-epoch) document order."""
    order = [int(d) for d in ds.document_index]
    epochs = len(order) // len(set(order))
    assert sorted(order) == sorted(sorted(set(order)) * epochs)  # each document once per epoch
    stream = numpy.concatenate([docs[d] for d in order])
    doc_start = numpy.concatenate([[0], numpy.cumsum([len(docs[d]) for d in order])])
    window_start = [int(doc_start[d] + off) for d, off in ds.sample_index]
    assert window_start == list(range(0, len(ds) * seq + 1, seq))  # tiles the stream, unshifted
    seen = set()
    for i in range(len(ds)):
        sample = ds[i]
        assert list(sample) == ["tokens"] and sample["tokens"].dtype == torch.int64
        j = int(ds.shuffle_index[i])
        seen.add(j)
        expect = stream[window_start[j] : window_start[j] + seq]
        assert sample["tokens"].tolist() == expect.tolist()
    assert seen == set(range(len(ds)))  # each window exactly once


def test_split_of_one_dataset(data, gpt2):
    prefix, docs = data["a"]
    train, valid, test = build_sedd_datasets(
        [None, None, None], tokenizer=gpt2, seq_length=SEQ, seed=3, data_path=[prefix],
        split="80,20,0",
    )  # fmt: skip
    assert isinstance(train, SEDDDataset) and isinstance(valid, SEDDDataset) and test is None
    assert set(train.document_index).isdisjoint(valid.document_index)
    assert len(set(train.document_index)) == 32 and len(set(valid.document_index)) == 8
    check_windows(train, docs)
    check_windows(valid, docs)


def test_blend_of_two_datasets(data, gpt2, tmp_path):
    (pa, docs_a), (pb, docs_b) = data["a"], data["b"]
    kwargs = dict(
        tokenizer=gpt2, seq_length=SEQ, seed=5, train_data_path=["1", pa, "3", pb],
        valid_data_path=pa, data_cache_path=str(tmp_path / "cache"),
    )  # fmt: skip
    train, valid, test = build_sedd_datasets([200, 10, None], **kwargs)
    assert isinstance(train, TokensOnly) and len(train) == 200 and test is None
    assert isinstance(valid, SEDDDataset)
    part_a, part_b = train.datasets
    check_windows(part_a, docs_a)
    check_windows(part_b, docs_b)
    from_b = 0
    for i in range(len(train)):
        source, j = int(train.dataset_index[i]), int(train.dataset_sample_index[i])
        tokens = train[i]["tokens"]
        assert list(train[i]) == ["tokens"]
        assert (tokens == train.datasets[source][j]["tokens"]).all()
        real = tokens[tokens != EOS]
        assert ((real >= 1000) == bool(source)).all()  # ids tell which dataset a window is from
        from_b += source
    assert 140 <= from_b <= 160  # weights 1:3
    cached = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").iterdir())
    assert "BlendedDataset-train-dataset_index.npy" in cached
    again, _, _ = build_sedd_datasets([200, 10, None], **kwargs)  # from the index cache
    assert all((again[i]["tokens"] == train[i]["tokens"]).all() for i in range(0, 200, 17))


def test_mock_data_without_paths(gpt2):
    train, valid, test = build_sedd_datasets([8, 4, 4], tokenizer=gpt2, seq_length=SEQ)
    assert isinstance(train, MockSEDDDataset) and len(train) >= 8
    assert list(train[0]) == ["tokens"] and train[0]["tokens"].shape == (SEQ,)


def test_provider_from_megatron_args_after_init_distributed(data, tmp_path):
    worker = Path(__file__).parent / "workers" / "args_provider.py"
    (pa, _), (pb, _) = data["a"], data["b"]
    result = parse_result(run_python(worker, [pa, pb, str(tmp_path)], timeout=180).stdout)
    assert result["types"] == ["TokensOnly", "SEDDDataset", "NoneType"]
    assert result["train_len"] >= 20 and result["keys"] == ["tokens"]
    assert result["batch_shape"] == [4, SEQ] and result["built_on_rank"] is True
    assert result["mock_types"] == ["MockSEDDDataset"] * 3
    assert result["megatron_tokenizer"] == [50257, 50256]
