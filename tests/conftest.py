"""Shared fixtures. Conformance vectors (produced by running the reference SEDD code) live in
tests/data/conformance; see its README.md.

Triton's interpreter runs the fused kernels on CPU tensors in the tests that ask for them
(``SEDD_TRITON_ON_CPU=1``: tests/kernels, the fused parallel-layout workers). It needs
``TRITON_INTERPRET=1`` before anything imports triton (megatron does), so it is set here, first,
on machines without CUDA; without the request, CPU tensors keep the torch code.
"""

import os

if not os.environ.get("TRITON_INTERPRET"):
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

DATA_DIR = Path(__file__).parent / "data"
CONFORMANCE_DIR = DATA_DIR / "conformance"
CONFORMANCE_MODELS = ("tiny_absorb", "tiny_uniform")


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    return CONFORMANCE_DIR


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    """PTB (real text, GPT-2 BPE) as indexed datasets: train (a 300 kB slice), valid, test."""
    from sedd_megatron.datasets.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    build_corpus(str(out), sources=("ptb",), max_train_bytes=300_000, progress=False)
    return {split: str(out / split) for split in ("train", "valid", "test")}
