"""Fixtures for the data tests: the GPT-2 tokenizer and small indexed datasets."""

import importlib.util
import warnings

import pytest

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")


def needs(*modules: str):
    """Skip unless every module is installed (corpus packages, optional tokenizer libraries)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


@pytest.fixture(scope="session")
def gpt2():
    from sedd_megatron.datasets.tokenizers import build_tokenizer

    return build_tokenizer("gpt2")
