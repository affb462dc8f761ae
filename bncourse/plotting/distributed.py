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


def plot_batch_size_sweep(batch_sizes: Sequence[int], accuracy: dict[str, np.ndarray],
                          examples: int | None = None, min_steps: int | None = None) -> Figure:
    """Test accuracy against batch size per normalization: every seed a dot, the mean a line.

    ``examples`` and ``min_steps`` are the sweep's rule (every run sees at least that many
    examples and takes at least that many steps); the x label states it.
    """
    fig, ax = new_figure(width=7.0, height=4.4)
    m = np.asarray(batch_sizes, dtype=float)
    offsets = {"batch": 0.94, "group": 1.0, "layer": 1.06}
    for norm, acc in accuracy.items():
        acc = 100 * np.asarray(acc, dtype=float)
        colour = NORM_COLORS.get(norm, COLORS["theory"])
        ax.plot(m, acc.mean(axis=0), "-", color=colour, lw=1.5, label=_NORM_LABELS.get(norm, norm))
        for row in acc:
            ax.plot(m * offsets.get(norm, 1.0), row, "o", color=colour, ms=3.5, alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xticks(m, [str(int(v)) for v in m])
    ax.minorticks_off()
    rule = []
    if examples is not None:
        rule.append(f"\u2265 {examples:,d} examples")
    if min_steps is not None:
        rule.append(f"\u2265 {min_steps:d} steps")
    ax.set_xlabel("batch size (examples per step)"
                  + (f"; every run: {' and '.join(rule)}" if rule else ""))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("BatchNorm falls far behind at a batch of 2, less at 3 and 4;\n"
                 "GroupNorm and LayerNorm take no statistics over the batch")
    fig.legend(loc="outside lower center", ncols=3)  # below the axes, clear of the data
    return fig


def _median_bars(ax, procs: Sequence[int], costs: dict[int, dict[str, Any]],
                 series: Sequence[tuple[str, str, str, str]]) -> None:
    """Per key of ``series`` (key, marker, colour, label): medians with their intervals."""
    shifts = np.linspace(-0.06, 0.06, len(series)) if len(series) > 1 else [0.0]
    for (key, marker, colour, label), shift in zip(series, shifts, strict=True):
        med = np.array([costs[p][key].median for p in procs])
        low = med - np.array([costs[p][key].low for p in procs])
        high = np.array([costs[p][key].high for p in procs]) - med
        ax.errorbar(np.array(procs) + shift, med, yerr=[low, high], fmt=marker + "-",
                    color=colour, ms=5, capsize=3, label=label)
    ax.axhline(0, color=COLORS["theory"], lw=0.8)
    keys = [key for key, *_ in series]
    highest = max(costs[p][k].high for p in procs for k in keys)
    lowest = min(0.0, min(costs[p][k].low for p in procs for k in keys))
    ax.set_ylim(lowest - 0.05 * (highest - lowest), lowest + 1.45 * (highest - lowest))
    ax.legend(loc="upper left", frameon=True, framealpha=1, edgecolor="none")


def plot_scaling(bench: dict[str, Any], costs: dict[int, dict[str, Any]]) -> Figure:
    """Time per step against the number of processes, and what SyncBatchNorm adds.

    Top: the median and quartiles of the step time of each variant of the benchmark. Middle:
    per number of processes, the price of synchronizing (sync - sync_self) and the cost of
    the layer's code (sync_self - local). Bottom: that cost split into the fixed overhead of
    the layer's collectives (sync_self - no_collectives) and the rest of its code
    (no_collectives - local). Each difference is the median of the paired per-step
    differences with its 95% interval; ``costs[p][key]`` has ``median``, ``low`` and
    ``high`` (:class:`bncourse.claims.MedianDifference`).
    """
    fig, (top, middle, bottom) = new_figure(nrows=3, width=7.0, height=9.0, sharex=True)
    styles = {"sync": ("o-", NORM_COLORS["batch"], "SyncBatchNorm, all processes"),
              "sync_self": ("^-.", COLORS["staged"],
                            "SyncBatchNorm, one-process groups (nothing exchanged)"),
              "no_collectives": ("v:", COLORS["compiled"],
                                 "the same, collectives replaced by local copies"),
              "local": ("s--", COLORS["input"], "bncourse.BatchNorm (no BN collectives)")}
    for variant, (marker, colour, label) in styles.items():
        rows = sorted((r for r in bench["rows"] if r["variant"] == variant),
                      key=lambda r: r["processes"])
        if not rows:
            continue
        p = [r["processes"] for r in rows]
        med = np.array([r["median_ms"] for r in rows])
        lo = med - np.array([r["q1_ms"] for r in rows])
        hi = np.array([r["q3_ms"] for r in rows]) - med
        top.errorbar(p, med, yerr=[lo, hi], fmt=marker, color=colour, ms=5, capsize=3,
                     label=label)
    top.set_ylabel("time per training step (ms)\nmedian and quartiles")
    top.set_title("Time per step, and what SyncBatchNorm adds, against the number of processes")
    top.set_ylim(0, 1.6 * max(r["q3_ms"] for r in bench["rows"]))  # room for the legend
    top.legend(loc="upper left", frameon=True, framealpha=1, edgecolor="none")
    procs = sorted(costs)
    _median_bars(middle, procs, costs, (
        ("exchange", "o", NORM_COLORS["batch"], "price of synchronizing (sync \u2212 sync_self)"),
        ("code", "^", COLORS["staged"], "layer's code (sync_self \u2212 local)")))
    middle.set_ylabel("extra time per step (ms)\nmedian, 95% interval")
    _median_bars(bottom, procs, costs, (
        ("collectives", "^", COLORS["staged"],
         "the code's collectives (sync_self \u2212 no_collectives)"),
        ("arithmetic", "v", COLORS["compiled"],
         "the rest of the code (no_collectives \u2212 local)")))
    bottom.set_ylabel("the code's cost (ms)\nmedian, 95% interval")
    cores = bench.get("cores") or bench["machine"].get("cores")  # the cores the processes used
    for ax in (top, middle, bottom):
        if cores:
            ax.axvline(cores + 0.5, color=COLORS["theory"], lw=1, ls=":")
    bottom.set_xticks(sorted({r["processes"] for r in bench["rows"]}))
    where = f"; dotted line: the {cores} cores used" if cores else ""
    bottom.set_xlabel(f"number of processes (global batch fixed{where})")
    return fig
