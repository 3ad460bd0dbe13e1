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


def _progressions(n: int, length: int, vocab: int, generator) -> torch.Tensor:
    """Rows (a, a + 1, ...) mod vocab with random starts a: the tiny model's synthetic task."""
    start = torch.randint(0, vocab, (n, 1), generator=generator)
    return (start + torch.arange(length)) % vocab


@pytest.fixture(scope="session")
def progression_models(tmp_path_factory) -> tuple[Path, Path]:
    """(untrained, trained) tiny absorbing SEDDs (vocabulary 16, length 12) in the published
    layout; the trained one learned arithmetic progressions mod 16 (plain backend, 300 Adam
    steps of the score-entropy loss on CPU, a few seconds)."""
    from sedd_megatron.diffusion import get_graph, get_noise
    from sedd_megatron.plain import SEDD, SEDDConfig

    torch.manual_seed(0)
    config = SEDDConfig(
        tokens=16,
        graph="absorb",
        hidden_size=32,
        cond_dim=16,
        length=12,
        n_blocks=1,
        n_heads=2,
        dropout=0.0,
    )
    model = SEDD(config)
    root = tmp_path_factory.mktemp("progressions")
    model.save_pretrained(root / "untrained")
    graph, noise = get_graph("absorb", 16), get_noise("loglinear")
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only contend
    for _ in range(300):
        x0 = _progressions(64, 12, 16, gen)
        t = (1 - 1e-3) * torch.rand(64, generator=gen) + 1e-3
        sigma, dsigma = noise(t)
        x_t = graph.sample_transition(x0, sigma[:, None], generator=gen)
        se = graph.score_entropy(model(x_t, sigma), sigma[:, None], x_t, x0)
        loss = (dsigma[:, None] * se).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    model.eval().save_pretrained(root / "trained")
    return root / "untrained", root / "trained"
