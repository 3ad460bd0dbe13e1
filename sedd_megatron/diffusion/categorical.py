"""Categorical sampling by the exponential race (Gumbel-max in exponential form).

For weights p_i >= 0 and E_i ~ Exp(1) i.i.d., argmax_i p_i / E_i is distributed as p / sum(p), so
the weights need no normalisation; negative weights never win against a positive one.

Two modes, chosen by ``dtype``:

* ``torch.float64`` (default): E = -log1p(-u'), u' = u + 2^-54, u ~ U[0, 1) on the 53-bit grid
  of ``torch.rand(dtype=float64)``. E resolves values down to ~1e-16, so masses far below 1e-9
  are drawn at their true rate (Zheng et al. 2024, arXiv 2409.02908). E is never 0, so a zero
  weight never wins (no 0/0).
* ``torch.float32``: the reference (SEDD ``catsample``) draw, bit for bit:
  ``u = torch.rand(p.shape, dtype=float32)``, ``argmax(p / (1e-10 - log(u + 1e-10)))``.
  Its E cannot go below 2^-24 ~ 6e-8 nor above ~23, so a category whose weight is below ~2.6e-9
  times the winner's can never be drawn, and masses around 1e-8..1e-7 are drawn too rarely.

``generator`` is ``None`` (global torch RNG, as the reference), one ``torch.Generator``, or a
list of generators, one per row of the leading dimension: row b then depends only on
``generator[b]``, so a sampler gives the same row whatever the batch composition.
"""

from collections.abc import Sequence

import torch

Generator = torch.Generator | Sequence[torch.Generator] | None


def _per_row(draw, shape, generator):
    if generator is None or isinstance(generator, torch.Generator):
        return draw(tuple(shape), generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a leading dimension of {shape[0]}")
    return torch.stack([draw(tuple(shape[1:]), g) for g in generator])


def uniform(shape, *, dtype=torch.float32, device=None, generator: Generator = None):
    """U[0, 1) of ``shape`` (torch.rand), optionally with one generator per leading row."""
    return _per_row(
        lambda s, g: torch.rand(s, dtype=dtype, device=device, generator=g), shape, generator
    )


def randint(high: int, shape, *, device=None, generator: Generator = None):
    """Uniform integers in [0, high) of ``shape`` (torch.randint), optionally per-row generators."""
    return _per_row(
        lambda s, g: torch.randint(0, high, s, device=device, generator=g), shape, generator
    )


def exponential_noise(u: torch.Tensor) -> torch.Tensor:
    """Map uniforms to the race's Exp(1) variates, in u's dtype (see the module docstring)."""
    if u.dtype == torch.float32:
        return 1e-10 - (u + 1e-10).log()
    if u.dtype == torch.float64:
        return -torch.log1p(-(u + 2.0**-54))
    raise ValueError(f"exponential_noise supports float32 and float64, got {u.dtype}")


def sample_categorical(
    probs: torch.Tensor, dtype: torch.dtype = torch.float64, generator: Generator = None
) -> torch.Tensor:
    """Draw argmax_i p_i / E_i over the last dimension of (possibly unnormalised) weights ``probs``.

    ``dtype`` float64 (accurate) or float32 (the reference's draw, reproducible from its RNG state).
    Weights are cast to ``dtype``, never renormalised or clipped.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    p = probs.to(dtype)
    u = uniform(p.shape, dtype=dtype, device=p.device, generator=generator)
    return (p / exponential_noise(u)).argmax(dim=-1)
