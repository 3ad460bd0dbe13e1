"""Data for SEDD on Megatron-Core: tokenizers, preprocessing to indexed datasets, the default
corpus and the train/valid/test dataset builders.

Importing this package does not import Megatron; the dataset builders load on first use.
"""

from sedd_megatron._lazy import lazy_exports
from sedd_megatron.errors import DataError

from .corpus import build_corpus, sources_markdown
from .preprocess import preprocess
from .tokenizers import (
    TextTokenizer,
    build_tokenizer,
    default_gpt2_files,
    megatron_tokenizer_flags,
    write_hf_gpt2_dir,
)

_LAZY = {  # sedd_dataset imports Megatron
    "build_sedd_datasets": "sedd_dataset",
    "sedd_dataset_config": "sedd_dataset",
    "sedd_datasets_from_args": "sedd_dataset",
    "train_valid_test_datasets_provider": "sedd_dataset",
    "get_batch_tokens": "sedd_dataset",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "DataError",
    "TextTokenizer",
    "build_corpus",
    "build_sedd_datasets",
    "build_tokenizer",
    "default_gpt2_files",
    "get_batch_tokens",
    "megatron_tokenizer_flags",
    "preprocess",
    "sedd_dataset_config",
    "sedd_datasets_from_args",
    "sources_markdown",
    "train_valid_test_datasets_provider",
    "write_hf_gpt2_dir",
]
