"""Train/valid/test datasets for SEDD through Megatron's ``BlendedMegatronDatasetBuilder``.

A diffusion LM denoises whole windows, so samples are unshifted (``add_extra_token_to_sequence
=False``) and carry only ``tokens`` (``seq_length`` ids, documents packed with their EOS ids);
no labels, attention mask, loss mask or position ids. Blends, splits, weights and the index cache
(``path_to_cache`` / ``--data-cache-path``) are Megatron's.

:func:`check_token_ids` refuses an indexed dataset whose token ids do not fit the vocabulary
before anything is built (otherwise the embedding fails mid-run, after Megatron has written its
index cache).

Two entry points:

- :func:`build_sedd_datasets`: explicit parameters, no Megatron ``args`` (tests, scripts).
- :func:`train_valid_test_datasets_provider`: for ``pretrain(...)`` in ``pretrain_sedd.py``;
  reads ``get_args()`` and ``get_tokenizer()``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence

import numpy
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.datasets.indexed_dataset import DType
from megatron.core.datasets.utils import get_blend_from_list

from sedd_megatron.errors import DataError

Blend = list[str] | str | None


class SEDDDataset(GPTDataset):
    """A GPTDataset whose samples are ``{"tokens": LongTensor[seq_length]}``."""

    def __getitem__(self, idx: int | None) -> dict[str, torch.Tensor]:
        # the token ids come first (megatron-core 0.19 returns 3 values, 0.18 two)
        text = self._query_document_sample_shuffle_indices(0 if idx is None else idx)[0]
        return {"tokens": torch.from_numpy(text).long()}


class MockSEDDDataset(MockGPTDataset):
    """Megatron's synthetic GPT data (``--mock-data``), as ``{"tokens": ...}`` samples."""

    def __getitem__(self, idx: int | None) -> dict[str, torch.Tensor]:
        # the token ids come first (megatron-core 0.19 returns 3 values, 0.18 two)
        text = self._query_document_sample_shuffle_indices(0 if idx is None else idx)[0]
        return {"tokens": torch.from_numpy(text).long()}


class TokensOnly(torch.utils.data.Dataset):
    """Wraps Megatron's BlendedDataset (which adds ``dataset_id``) to yield only ``tokens``;
    other attributes (``datasets``, ``dataset_index``, ...) pass through."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.dataset[idx]["tokens"]}

    def __getattr__(self, name: str):
        if name == "dataset":  # not yet set (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _blend(value: Blend):
    """Megatron blend from ``["w1", "prefix1", "w2", "prefix2"]``, ``["prefix", ...]`` or a
    whitespace-separated string of the same."""
    if value is None or value == [] or value == "":
        return None
    return get_blend_from_list(value.split() if isinstance(value, str) else list(value))


def sedd_dataset_config(
    *,
    tokenizer,
    seq_length: int,
    seed: int = 1234,
    data_path: Blend = None,
    split: str | None = None,
    train_data_path: Blend = None,
    valid_data_path: Blend = None,
    test_data_path: Blend = None,
    data_cache_path: str | None = None,
    mmap_bin_files: bool = True,
    num_dataset_builder_threads: int = 1,
    **extra,
) -> GPTDatasetConfig:
    """The GPTDatasetConfig for SEDD. ``data_path`` with ``split`` (e.g. ``"98,1,1"``), or
    per-split paths; neither gives Megatron's mock data. ``extra``: more config fields."""
    blend = _blend(data_path)
    per_split = [_blend(p) for p in (train_data_path, valid_data_path, test_data_path)]
    if blend is not None and any(per_split):
        raise DataError("give either data_path (+ split) or train/valid/test_data_path, not both")
    if blend is not None and split is None:
        split = "969,30,1"  # Megatron's legacy default for --data-path without --split
    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        blend_per_split=per_split if any(per_split) else None,
        split=split if blend is not None else None,
        path_to_cache=data_cache_path,
        mmap_bin_files=mmap_bin_files,
        num_dataset_builder_threads=num_dataset_builder_threads,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        add_extra_token_to_sequence=False,
        **extra,
    )


def build_sedd_datasets(
    num_samples: Sequence[int | None],
    *,
    tokenizer,
    seq_length: int,
    is_built_on_rank: Callable[[], bool] = lambda: True,
    **config_kwargs,
):
    """Build ``(train, valid, test)`` datasets; ``num_samples`` per split (``None``: one epoch).
    ``tokenizer`` needs ``vocab_size`` and ``eod`` (ours or Megatron's). A split with no data
    (e.g. split weight 0) is ``None``. See :func:`sedd_dataset_config` for the data options."""
    config = sedd_dataset_config(tokenizer=tokenizer, seq_length=seq_length, **config_kwargs)
    cls = MockSEDDDataset if config.mock else SEDDDataset
    builder = BlendedMegatronDatasetBuilder(cls, list(num_samples), is_built_on_rank, config)
    return tuple(d if d is None or isinstance(d, cls) else TokensOnly(d) for d in builder.build())


def is_dataset_built_on_rank(vp_stage: int | None = None) -> bool:
    """Build data on tensor-parallel rank 0 of the first and last pipeline stages (the others
    receive tokens through :func:`get_batch_tokens`)."""
    from megatron.core import parallel_state as ps

    edge = ps.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage) or (
        ps.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    )
    return edge and ps.get_tensor_model_parallel_rank() == 0


def sedd_datasets_from_args(num_samples, args, tokenizer, vp_stage: int | None = None):
    """:func:`build_sedd_datasets` configured from Megatron ``args`` (``--data-path``, ``--split``,
    ``--{train,valid,test}-data-path``, ``--seq-length``, ``--seed``, ``--data-cache-path``,
    ``--mock-data``, ``--no-mmap-bin-files``, ``--num-dataset-builder-threads``)."""
    names = ("data_path", "train_data_path", "valid_data_path", "test_data_path")
    if getattr(args, "data_args_path", None) or getattr(args, "per_split_data_args_path", None):
        from megatron.training.utils import get_blend_and_blend_per_split

        blend, per_split = get_blend_and_blend_per_split(args)
        blends = [blend, *(per_split or [None, None, None])]
        paths = {name: _flatten(b) for name, b in zip(names, blends, strict=True)}
    else:
        paths = {name: getattr(args, name, None) for name in names}
    if getattr(args, "mock_data", False):
        paths = {}
    return build_sedd_datasets(
        num_samples,
        tokenizer=tokenizer,
        seq_length=args.seq_length,
        seed=args.seed,
        split=getattr(args, "split", None),
        data_cache_path=getattr(args, "data_cache_path", None),
        mmap_bin_files=getattr(args, "mmap_bin_files", True),
        num_dataset_builder_threads=getattr(args, "num_dataset_builder_threads", 1),
        is_built_on_rank=lambda: is_dataset_built_on_rank(vp_stage),
        **paths,
    )


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage: int | None = None):
    """``pretrain(train_valid_test_datasets_provider, ...)`` hook: Megatron's global args and
    tokenizer. Use :func:`megatron_tokenizer_flags` for tokenizer flags matching the data."""
    from megatron.training import get_args, get_tokenizer, print_rank_0

    print_rank_0("> building SEDD train, validation, and test datasets ...")
    datasets = sedd_datasets_from_args(
        train_val_test_num_samples, get_args(), get_tokenizer(), vp_stage
    )
    print_rank_0("> finished creating SEDD datasets ...")
    return datasets


train_valid_test_datasets_provider.is_distributed = True


def get_batch_tokens(data_iterator, micro_batch_size: int, seq_length: int) -> torch.Tensor:
    """Next ``tokens`` batch [micro_batch_size, seq_length] on every tensor-parallel rank:
    rank 0 reads ``data_iterator``, the others receive it by broadcast."""
    from megatron.core import parallel_state as ps

    tp_size = ps.get_tensor_model_parallel_world_size()
    if tp_size == 1 or ps.get_tensor_model_parallel_rank() == 0:
        tokens = next(data_iterator)["tokens"].long()
        if tp_size == 1:
            return tokens
    else:
        tokens = torch.empty(micro_batch_size, seq_length, dtype=torch.long)
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    tokens = tokens.to(device)
    torch.distributed.broadcast(
        tokens, ps.get_tensor_model_parallel_src_rank(), group=ps.get_tensor_model_parallel_group()
    )
    return tokens


_IDX_MAGIC = b"MMIDIDX\x00\x00"  # Megatron's .idx header, then version <Q (1), dtype code <B


def index_dtype(prefix: str) -> numpy.dtype:
    """The token dtype that ``{prefix}.idx`` declares for ``{prefix}.bin``."""
    path = prefix + ".idx"
    with open(path, "rb") as f:
        head = f.read(len(_IDX_MAGIC) + 9)
    if len(head) < len(_IDX_MAGIC) + 9 or not head.startswith(_IDX_MAGIC):
        raise DataError(f"{path}: not a Megatron indexed dataset index (bad header)")
    version, code = struct.unpack("<QB", head[len(_IDX_MAGIC) :])
    try:
        if version != 1:
            raise ValueError(version)
        return numpy.dtype(DType.dtype_from_code(code))
    except (ValueError, KeyError) as err:
        raise DataError(f"{path}: unknown index version {version} or dtype code {code}") from err


def check_token_ids(prefix: str, vocab_size: int, chunk: int = 1 << 24) -> None:
    """Every token id of ``{prefix}.bin`` must lie in ``[0, vocab_size)`` (DataError if not).

    Reads the .bin through a memory map, ``chunk`` ids at a time (about a second per GB from
    the page cache); nothing is read when the .idx dtype cannot hold an id that large.
    """
    dtype = index_dtype(prefix)
    info = numpy.iinfo(dtype)
    if info.min >= 0 and info.max < vocab_size:
        return
    path = prefix + ".bin"
    size = os.path.getsize(path)
    if size % dtype.itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of {dtype.name} token ids")
    if size == 0:
        return
    ids = numpy.memmap(path, dtype=dtype, mode="r")
    for start in range(0, len(ids), chunk):
        block = ids[start : start + chunk]
        if block.max() < vocab_size and (info.min >= 0 or block.min() >= 0):
            continue
        offset = int(numpy.flatnonzero((block >= vocab_size) | (block < 0))[0])
        raise DataError(
            f"data prefix {prefix!r}: token id {int(block[offset])} (token {start + offset} of "
            f"{path}) is outside the vocabulary of {vocab_size} ids: the data was tokenized for "
            "another vocabulary (check --tokenizer-type / --vocab-size)"
        )


def _flatten(blend) -> list[str] | None:
    if blend is None:
        return None
    prefixes, weights = blend
    if weights is None:
        return list(prefixes)
    return [str(x) for pair in zip(weights, prefixes, strict=True) for x in pair]
