"""Data for SEDD on Megatron-Core: tokenizers, preprocessing to indexed datasets, the default
corpus and the train/valid/test dataset builders.

Importing this package does not import Megatron; names load on first use.
"""

import importlib

_EXPORTS = {
    "DataError": "errors",
    "TextTokenizer": "tokenizers",
    "build_tokenizer": "tokenizers",
    "default_gpt2_files": "tokenizers",
    "megatron_tokenizer_flags": "tokenizers",
    "write_hf_gpt2_dir": "tokenizers",
    "preprocess": "preprocess",
    "build_corpus": "corpus",
    "sources_markdown": "corpus",
    "build_sedd_datasets": "sedd_dataset",
    "sedd_dataset_config": "sedd_dataset",
    "sedd_datasets_from_args": "sedd_dataset",
    "train_valid_test_datasets_provider": "sedd_dataset",
    "get_batch_tokens": "sedd_dataset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
