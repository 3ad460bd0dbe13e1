"""Fixtures for the evaluation tests: the conformance models and a tiny GPT-2-vocabulary model."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


#: The tools whose program lives in the package (tools/<name>.py only calls its main).
CLI_MODULES = {"eval_elbo_sedd": "sedd_megatron.cli.eval_elbo"}


def load_tool(name: str):
    """The module with the program of tools/<name>.py (the package's, else the script's)."""
    if name in CLI_MODULES:
        return importlib.import_module(CLI_MODULES[name])
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def gpt2_model_dir(tmp_path_factory) -> Path:
    """A random tiny SEDD (absorb) with the GPT-2 vocabulary in the published layout."""
    from sedd_megatron.plain import SEDD, SEDDConfig

    torch.manual_seed(0)
    config = SEDDConfig(
        tokens=50257, graph="absorb", hidden_size=16, cond_dim=8, length=32, n_blocks=1, n_heads=2
    )
    path = tmp_path_factory.mktemp("gpt2_tiny") / "model"
    SEDD(config).save_pretrained(path)
    return path
