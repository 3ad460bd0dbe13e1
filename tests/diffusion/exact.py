"""Brute force on a tiny vocabulary: the rate matrix, exact marginals over all short
sequences, and the exact concrete score s(x)_{l,y} = p_t(x with x_l = y) / p_t(x).
Everything in float64."""

import itertools

import torch

from sedd_megatron.diffusion import Graph


def rate_matrix(graph: Graph) -> torch.Tensor:
    """Q (dim, dim) with Q[:, i] = graph.rate(i)."""
    ids = torch.arange(graph.dim)
    return graph.rate(ids, dtype=torch.float64).T.contiguous()


class SequenceModel:
    """A distribution p0 over token sequences of length L and its forward marginals p_t."""

    def __init__(self, graph: Graph, length: int, seed: int = 0):
        self.graph, self.length = graph, length
        dim, n = graph.dim, graph.num_tokens
        self.states = torch.tensor(list(itertools.product(range(dim), repeat=length)))
        self.num_states = len(self.states)
        clean = (self.states < n).all(-1)
        g = torch.Generator().manual_seed(seed)
        logits = 1.5 * torch.randn(self.num_states, generator=g, dtype=torch.float64)
        self.p0 = torch.where(clean, logits.exp(), torch.zeros_like(logits))
        self.p0 /= self.p0.sum()
        self.clean = clean.nonzero().squeeze(-1)  # indices of the support of p0
        self.q = rate_matrix(graph)
        # neighbours[state, l, y] = index of the state with position l set to y
        weights = dim ** torch.arange(length - 1, -1, -1)
        base = (self.states * weights).sum(-1)
        ys = torch.arange(dim)
        self.neighbours = (
            base[:, None, None]
            + (ys[None, None, :] - self.states[:, :, None]) * weights[None, :, None]
        )
        self.weights = weights

    def index(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weights).sum(-1)

    def kernel(self, sigma: float) -> torch.Tensor:
        """K[x_t, x_0] = prod_l exp(sigma Q)[x_t,l, x_0,l] over all states."""
        p = torch.linalg.matrix_exp(sigma * self.q)
        k = p
        for _ in range(self.length - 1):
            k = torch.kron(k, p)
        return k

    def marginal(self, sigma: float) -> torch.Tensor:
        return self.kernel(sigma) @ self.p0

    def log_score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Exact log concrete score (B, L, dim) of p_sigma at sequences x (B, L)."""
        logp = self.marginal(sigma).log()
        idx = self.index(x)
        return logp[self.neighbours[idx]] - logp[idx][:, None, None]

    def score_fn(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = torch.empty(*x.shape, self.graph.dim, dtype=torch.float64)
        for value in sigma.unique():
            rows = sigma == value
            out[rows] = self.log_score(x[rows], float(value))
        return out
