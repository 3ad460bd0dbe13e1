"""TP=2, PP=2 and DP=2 give the same ELBO draws and losses as the plain model for the same seed
(Megatron SEDDModel loaded by sedd_megatron.checkpoint from the conformance directory), for the
main term and the [0, t_eps] term."""

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from sedd_megatron.checkpoint import open_model
from sedd_megatron.evaluation import evaluate_elbo
from tests.launch import parse_result, run_torchrun

from .workers.elbo_parallel import DESIGNS

WORKER = Path(__file__).parent / "workers" / "elbo_parallel.py"
LAYOUTS = ("tp2", "pp2", "dp2")


@pytest.fixture(scope="module")
def plain_reference(conformance_dir):
    scorer = open_model(conformance_dir / "tiny_absorb", "plain")
    tokens = load_file(str(conformance_dir / "tokens.safetensors"))["tokens"]
    out = {}
    for design, samples, replicates in DESIGNS:
        result = evaluate_elbo(
            scorer,
            tokens,
            design=design,
            num_t_samples=samples,
            replicates=replicates,
            batch_size=4,
            progress=False,
            seed=11,
        )
        out[design] = [b.to_dict(draws=True) for b in result.blocks]
        out[f"{design}:tail"] = [b.to_dict(draws=True) for b in result.tail]
    return out


@pytest.fixture(scope="module")
def parallel_results(conformance_dir):
    proc = run_torchrun(
        WORKER,
        2,
        [
            str(conformance_dir / "tiny_absorb"),
            str(conformance_dir / "tokens.safetensors"),
            "--layouts",
            ",".join(LAYOUTS),
        ],
        timeout=300,
    )
    return parse_result(proc.stdout)


@pytest.mark.distributed
@pytest.mark.parametrize("layout", LAYOUTS)
def test_parallel_layout_matches_plain(plain_reference, parallel_results, layout):
    result = parallel_results[layout]
    assert result["dp"] == (2 if layout == "dp2" else 1)
    for design, expected in plain_reference.items():
        blocks = result[design]
        assert [b["block"] for b in blocks] == [b["block"] for b in expected]
        for got, ref in zip(blocks, expected, strict=True):
            assert got["t"] == ref["t"] and got["count"] == ref["count"]
            assert got["weight"] == ref["weight"]
            np.testing.assert_allclose(got["loss"], ref["loss"], rtol=2e-5, atol=1e-4)
