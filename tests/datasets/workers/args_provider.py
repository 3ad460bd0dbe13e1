"""Worker (one process): train_valid_test_datasets_provider with Megatron's global args and
tokenizer (NullTokenizer flags for GPT-2), inside ``with sedd_megatron.runtime.world()``.

Usage: args_provider.py PREFIX_A PREFIX_B CACHE_DIR
"""

import json
import sys
from types import SimpleNamespace

import torch

from sedd_megatron.runtime import world


def megatron_args(**data) -> SimpleNamespace:
    base = dict(
        tokenizer_type="NullTokenizer", vocab_size=50257, pad_vocab_size=True, rank=0,
        make_vocab_size_divisible_by=128, tensor_model_parallel_size=1, seq_length=32, seed=7,
        data_path=None, split=None, train_data_path=None, valid_data_path=None,
        test_data_path=None, data_args_path=None, per_split_data_args_path=None,
        data_cache_path=None, mock_data=False, mmap_bin_files=True,
        num_dataset_builder_threads=1,
    )  # fmt: skip
    base.update(data)
    return SimpleNamespace(**base)


def main(prefix_a: str, prefix_b: str, cache: str) -> None:
    with world():
        from megatron.training import global_vars

        from sedd_megatron.datasets.sedd_dataset import (
            get_batch_tokens,
            is_dataset_built_on_rank,
            train_valid_test_datasets_provider,
        )

        args = megatron_args(
            train_data_path=["30", prefix_a, "70", prefix_b], valid_data_path=[prefix_a],
            data_cache_path=cache,
        )  # fmt: skip
        global_vars.set_args(args)
        tokenizer = global_vars._build_tokenizer(args)
        train, valid, test = train_valid_test_datasets_provider([20, 5, None])
        loader = iter(torch.utils.data.DataLoader(train, batch_size=4))
        batch = get_batch_tokens(loader, 4, args.seq_length)

        global_vars.set_args(megatron_args(mock_data=True))
        mock = train_valid_test_datasets_provider([4, 4, 4])
        report = {
            "types": [type(d).__name__ for d in (train, valid, test)],
            "train_len": len(train),
            "keys": list(train[0]),
            "batch_shape": list(batch.shape),
            "built_on_rank": is_dataset_built_on_rank(),
            "mock_types": [type(d).__name__ for d in mock],
            "megatron_tokenizer": [tokenizer.vocab_size, tokenizer.eod],
            "provider_is_distributed": train_valid_test_datasets_provider.is_distributed,
        }
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
