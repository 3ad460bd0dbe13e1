"""Exact AR likelihood on blocks (sedd_megatron.evaluation.autoregressive) against a brute-force
product of conditional probabilities of a known model: a BOS-prefixed bigram table."""

import math

import numpy as np
import pytest
import torch

from sedd_megatron.errors import EvalError
from sedd_megatron.evaluation.autoregressive import ar_summary, block_nlls, evaluate_ar

V, BOS = 7, 6


def bigram_table(seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, V, generator=g, dtype=torch.float64) * 2  # logits[prev, next]


def bigram_logits_fn(table):
    def logits_fn(tokens):
        prev = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
        return table[prev].float()

    return logits_fn


def brute_force_nll(table, block) -> float:
    total, prev = 0.0, BOS
    for tok in block:
        row = [math.exp(v) for v in table[prev].float().double().tolist()]
        total -= math.log(row[tok] / sum(row))
        prev = tok
    return total


def test_block_nlls_equal_brute_force_for_any_batch_size():
    table = bigram_table()
    blocks = torch.randint(0, V, (5, 9), generator=torch.Generator().manual_seed(1))
    expected = [brute_force_nll(table, b.tolist()) for b in blocks]
    for batch_size in (1, 2, 5, 8):
        got = block_nlls(bigram_logits_fn(table), blocks, batch_size=batch_size, progress=False)
        np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_a_wrong_model_gives_a_different_number():
    table, other = bigram_table(0), bigram_table(1)
    blocks = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(2))
    expected = [brute_force_nll(table, b.tolist()) for b in blocks]
    got = block_nlls(bigram_logits_fn(other), blocks, progress=False)
    assert not np.allclose(got, expected, rtol=1e-3)


def test_summary_is_the_perplexity_of_all_tokens():
    nlls = np.array([10.0, 14.0])
    s = ar_summary(nlls, seq_length=4)
    assert s["tokens"] == 8 and s["nats_per_token"] == pytest.approx(3.0)
    assert s["perplexity"] == pytest.approx(math.exp(3.0))
    assert s["ci_perplexity"] == [s["perplexity"]] * 2 and s["exact"]
    full = evaluate_ar(bigram_logits_fn(bigram_table()), torch.zeros(2, 3, dtype=torch.long),
                       progress=False)  # fmt: skip
    assert len(full["block_nlls"]) == 2 and full["seconds"] >= 0


@pytest.mark.parametrize(
    "blocks, fn, message",
    [
        (torch.zeros(0, 4, dtype=torch.long), None, "non-empty"),
        (torch.zeros(2, 4, dtype=torch.long), lambda x: torch.zeros(2, 3, V), "logits of shape"),
        (torch.full((1, 4), V, dtype=torch.long), lambda x: torch.zeros(1, 4, V), "token id 7"),
    ],
)
def test_bad_inputs_are_one_error(blocks, fn, message):
    with pytest.raises(EvalError, match=message):
        block_nlls(fn, blocks, progress=False)
