"""Vocab-parallel score entropy: the SEDD loss from TP-sharded log-scores, no vocabulary gather.

The graph's score entropy is a function of a few per-token sums over the vocabulary
(``Graph.score_entropy_stats``). Each TP rank computes them on its shard, one all-reduce sums
them, and every rank combines the totals (``Graph.score_entropy_from_stats``). The all-reduce is
Megatron's ``reduce_from_tensor_model_parallel_region``: its backward is the identity, which is
the gradient of the redundant per-rank combination with respect to each rank's partial sums.
"""

import torch
from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

from sedd_megatron.diffusion import get_graph




def vocab_parallel_score_entropy(
    graph_name: str,
    num_tokens: int,
    log_score_shard: torch.Tensor,
    sigma: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    vocab_offset: int,
    num_valid: int,
    tp_group,
) -> torch.Tensor:
    """Per-token score entropy [b, s] from this rank's log-score columns.

    Args:
        log_score_shard: [b, s, n] log-scores of vocabulary rows [vocab_offset, vocab_offset + n);
            columns from ``num_valid`` on are vocabulary padding (finite, ignored).
        sigma: total noise [b].
    """
    graph = get_graph(graph_name, num_tokens)
    stats = graph.score_entropy_stats(
        log_score_shard, x_t, x0, vocab_offset=vocab_offset, num_valid=num_valid
    )
    if tp_group.size() > 1:
        stats = stats.map(lambda s: reduce_from_tensor_model_parallel_region(s, group=tp_group))
    return graph.score_entropy_from_stats(stats, sigma[:, None], x_t, x0)
