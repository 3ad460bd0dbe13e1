"""Exact likelihood of an autoregressive model on the ELBO harness's blocks.

``logits_fn(blocks (b, L)) -> (b, L, V)``: the logits at position i predict token i of each
block from the tokens before it (a BOS-prefixed model: position 0 sees only BOS). The block
log-likelihood is sum_i log softmax(logits_i)[x_i] over the data vocabulary, accumulated in
float64; the perplexity is exp(sum of block NLLs / sum of tokens), the same aggregation as the
SEDD bound (:func:`~sedd_megatron.evaluation.stats.elbo_summary`) on the same blocks, so the two
numbers compare directly. There is no Monte-Carlo error: the interval is the number itself.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from sedd_megatron.errors import EvalError
from sedd_megatron.evaluation.stats import LN2


def block_nlls(
    logits_fn, blocks: torch.Tensor, *, batch_size: int = 8, progress: bool = True, device=None
) -> np.ndarray:
    """Per-block negative log-likelihood (nats, float64) of ``blocks`` (n, L)."""
    if batch_size < 1:
        raise EvalError(f"batch_size must be positive, got {batch_size}")
    if blocks.ndim != 2 or blocks.shape[0] == 0:
        raise EvalError(
            f"expected a non-empty (blocks, seq_length) tensor, got {tuple(blocks.shape)}"
        )
    out = []
    for start in tqdm(range(0, blocks.shape[0], batch_size), desc="AR likelihood",
                      unit="batch", disable=not progress):  # fmt: skip
        x = blocks[start : start + batch_size]
        if device is not None:
            x = x.to(device)
        logits = logits_fn(x)
        if logits.shape[:2] != x.shape:
            raise EvalError(f"logits of shape {tuple(logits.shape)} for blocks {tuple(x.shape)}")
        if int(x.max()) >= logits.shape[-1]:
            raise EvalError(f"token id {int(x.max())} outside the model's {logits.shape[-1]}")
        logp = torch.log_softmax(logits.double(), dim=-1)
        out.append(-logp.gather(-1, x[..., None]).squeeze(-1).sum(-1))
    return torch.cat(out).cpu().numpy()


def ar_summary(nlls: np.ndarray, seq_length: int) -> dict:
    """nats/token, bits/token and perplexity (exact; ``ci`` is the point itself)."""
    tokens = len(nlls) * seq_length
    nats = float(np.sum(nlls)) / tokens
    return {
        "blocks": int(len(nlls)),
        "tokens": int(tokens),
        "nats_per_token": nats,
        "bits_per_token": nats / LN2,
        "perplexity": math.exp(nats),
        "ci_perplexity": [math.exp(nats), math.exp(nats)],
        "exact": True,
    }


def evaluate_ar(
    logits_fn, blocks: torch.Tensor, *, batch_size: int = 8, progress: bool = True, device=None
) -> dict:
    """:func:`block_nlls` and :func:`ar_summary` of ``blocks``, with the wall time."""
    start = time.perf_counter()
    nlls = block_nlls(logits_fn, blocks, batch_size=batch_size, progress=progress, device=device)
    return {
        **ar_summary(nlls, blocks.shape[1]),
        "seconds": time.perf_counter() - start,
        "block_nlls": nlls.tolist(),
    }
