"""Shared fixtures. Conformance vectors (produced by running the reference SEDD code) live in
tests/data/conformance; see its README.md."""

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
CONFORMANCE_DIR = DATA_DIR / "conformance"
CONFORMANCE_MODELS = ("tiny_absorb", "tiny_uniform")


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    return CONFORMANCE_DIR
