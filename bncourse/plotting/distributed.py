"""Figures of the chapter on small batches and many processes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from . import COLORS, new_figure

__all__ = ["NORM_COLORS", "plot_statistics_noise", "plot_batch_size_sweep", "plot_scaling"]

#: One colour per normalization; batch norm keeps the colour of "with BN" of earlier chapters.
NORM_COLORS = {"batch": COLORS["with_bn"], "group": "#2a9d8f", "layer": "#6d597a"}
_NORM_LABELS = {"batch": "BatchNorm", "group": "GroupNorm (8 groups)", "layer": "LayerNorm"}


def plot_statistics_noise(sizes: Sequence[int], mean_std: Sequence[float],
                          var_std: Sequence[float]) -> Figure:
    r"""Measured spread of the batch mean and batch variance against $m$, with the theory.

    ``mean_std`` and ``var_std`` are the standard deviations, over many batches of
    standard normal values, of the batch mean and of the biased batch variance; the lines
    are $1/\sqrt{m}$ and $\sqrt{2(m-1)}/m$.
    """
    fig, ax = new_figure(width=7.0, height=3.8)
    m = np.asarray(sizes, dtype=float)
    ax.loglog(m, mean_std, "o", color=COLORS["input"], ms=5, label="batch mean, measured")
    ax.loglog(m, 1 / np.sqrt(m), "-", color=COLORS["input"], lw=1,
              label=r"$\sigma/\sqrt{m}$")
    ax.loglog(m, var_std, "s", color=COLORS["normalized"], ms=5,
              label="batch variance, measured")
    ax.loglog(m, np.sqrt(2 * (m - 1)) / m, "--", color=COLORS["normalized"], lw=1,
              label=r"$\sigma^2\sqrt{2(m-1)}/m$")
    ax.set_xticks(m, [str(int(v)) for v in m])
    ax.set_yticks([0.1, 0.2, 0.4, 0.7], ["0.1", "0.2", "0.4", "0.7"])
    ax.minorticks_off()
    ax.set_xlabel("batch size $m$ (values per channel)")
    ax.set_ylabel("standard deviation over batches\n(data with $\\sigma = 1$)")
    ax.set_title("The batch statistics are noisy at small m, as the formulas predict:\n"
                 "the mean's spread falls like $1/\\sqrt{m}$, the variance's for large m")
    ax.legend(loc="lower left")
    return fig


def plot_batch_size_sweep(batch_sizes: Sequence[int], accuracy: dict[str, np.ndarray]) -> Figure:
    """Test accuracy against batch size per normalization: every seed a dot, the mean a line."""
    fig, ax = new_figure(width=7.0, height=4.2)
    m = np.asarray(batch_sizes, dtype=float)
    offsets = {"batch": 0.94, "group": 1.0, "layer": 1.06}
    for norm, acc in accuracy.items():
        acc = 100 * np.asarray(acc, dtype=float)
        colour = NORM_COLORS.get(norm, COLORS["theory"])
        ax.plot(m, acc.mean(axis=0), "-", color=colour, lw=1.5, label=_NORM_LABELS.get(norm, norm))
        for row in acc:
            ax.plot(m * offsets.get(norm, 1.0), row, "o", color=colour, ms=4, alpha=0.7)
    ax.set_xscale("log", base=2)
    ax.set_xticks(m, [str(int(v)) for v in m])
    ax.minorticks_off()
    ax.set_xlabel("batch size (examples per step; the same number of examples seen)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("BatchNorm loses accuracy at the smallest batches;\n"
                 "GroupNorm and LayerNorm do not depend on the batch")
    fig.legend(loc="outside lower center", ncols=3)  # below the axes, clear of the data
    return fig


def plot_scaling(bench: dict[str, Any]) -> Figure:
    """Time per step against the number of processes: SyncBatchNorm on all processes, the same
    layer on one-process groups, and plain BatchNorm."""
    fig, ax = new_figure(width=7.0, height=4.8)
    styles = {"sync": ("o-", NORM_COLORS["batch"], "SyncBatchNorm, all processes"),
              "sync_self": ("^-.", COLORS["staged"],
                            "SyncBatchNorm, one-process groups (nothing exchanged)"),
              "local": ("s--", COLORS["input"], "bncourse.BatchNorm (no collectives)")}
    for variant, (marker, colour, label) in styles.items():
        rows = sorted((r for r in bench["rows"] if r["variant"] == variant),
                      key=lambda r: r["processes"])
        if not rows:
            continue
        p = [r["processes"] for r in rows]
        med = np.array([r["median_ms"] for r in rows])
        lo = med - np.array([r["q1_ms"] for r in rows])
        hi = np.array([r["q3_ms"] for r in rows]) - med
        ax.errorbar(p, med, yerr=[lo, hi], fmt=marker, color=colour, ms=5, capsize=3,
                    label=label)
    cores = bench["machine"].get("cores")
    if cores:
        ax.axvline(cores + 0.5, color=COLORS["theory"], lw=1, ls=":")
    ax.set_xticks(sorted({r["processes"] for r in bench["rows"]}))
    where = f"; dotted line: {cores} cores" if cores else ""
    ax.set_xlabel(f"number of processes (global batch fixed{where})")
    ax.set_ylabel("time per training step (ms)\nmedian and quartiles")
    ax.set_title("Time per step against the number of processes on this machine")
    fig.legend(loc="outside lower center", ncols=1)  # below the axes, clear of the data
    return fig
