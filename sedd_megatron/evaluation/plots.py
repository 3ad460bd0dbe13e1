"""Plots of evaluation results (PNG, matplotlib with the Agg backend, imported on use)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from sedd_megatron.errors import EvalError


def plot_integrand(
    result, path: str | os.PathLike, title: str | None = None, max_points: int = 20000
):
    """PNG of an :class:`~sedd_megatron.evaluation.report.ElboResult`: per-draw
    sigma_bar'(t) * sum_l SE_l / L against t (log t), the binned integrand and the ELBO (its
    mean over t)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.concatenate([b.t.ravel() for b in result.blocks])
    y = np.concatenate([b.loss.ravel() for b in result.blocks]) / result.seq_length
    if t.size > max_points:
        pick = np.random.default_rng(0).choice(t.size, max_points, replace=False)
        t, y = t[pick], y[pick]
    bins = int(np.clip(t.size // 10, 6, 30))
    curve = result.integrand_curve(bins)
    s = result.summary()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(t, y, s=4, alpha=0.3, color="tab:blue", label="draws (unweighted)")
    ok = np.isfinite(curve["integrand"])
    ax.plot(
        curve["t"][ok],
        curve["integrand"][ok],
        "o-",
        color="tab:red",
        lw=2,
        ms=3,
        label="integrand (binned estimate)",
    )
    ax.axhline(
        s["nats_per_token"],
        color="k",
        ls="--",
        lw=1,
        label=f"ELBO {s['nats_per_token']:.3f} nats/token",
    )
    top = np.nanpercentile(np.concatenate([y, curve["integrand"][ok]]), 99)
    ax.set_ylim(0, 1.25 * max(top, s["nats_per_token"]))
    ax.set_xscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel(r"$\bar\sigma'(t)\,\sum_l \mathrm{SE}_l\,/\,L$  (nats/token)")
    design = result.settings.get("design", "")
    ax.set_title(title or f"SEDD ELBO integrand ({design}, {s['blocks']} blocks)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_gen_ppl_vs_steps(runs: Sequence[dict], path: str | os.PathLike, title: str | None = None):
    """PNG (log-log) of generative perplexity against sampling steps (the paper's Fig. 1 shape).

    ``runs``: dicts with ``steps``, ``gen_ppl``, optionally ``gen_ppl_stderr`` and ``label``
    (one line per label, e.g. per model or predictor); runs without steps are skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[dict]] = {}
    for run in runs:
        if run.get("steps"):
            lines.setdefault(run.get("label") or "samples", []).append(run)
    if not lines:
        raise EvalError("no run records its sampling steps (settings.steps); nothing to plot")
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for label, pts in sorted(lines.items()):
        pts = sorted(pts, key=lambda r: r["steps"])
        x = [r["steps"] for r in pts]
        y = [r["gen_ppl"] for r in pts]
        err = [1.96 * r.get("gen_ppl_stderr", 0.0) for r in pts]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("generative perplexity (lower is better)")
    scorer = next(iter(runs)).get("scorer", "")
    ax.set_title(title or f"Generative perplexity vs steps (scorer: {scorer})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
