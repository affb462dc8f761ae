"""Figures of chapter 9, BN in the wild."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from . import COLORS, new_figure

#: One colour per way of normalizing at test time.
METHOD_COLORS = {"running": COLORS["running"], "adabn": COLORS["eval"],
                 "batch": COLORS["train"], "tent": COLORS["normalized"]}
METHOD_LABELS = {"running": "training statistics", "adabn": "AdaBN (re-estimated)",
                 "batch": "test batch's statistics", "tent": "TENT"}


def plot_leak(batch_sizes: Sequence[int], curves: Mapping[str, tuple[Sequence[float],
                                                                   Sequence[float]]]):
    """Fraction of an example's predictions that change with its batch-mates (mean, error)."""
    fig, ax = new_figure(width=7.0, height=3.6)
    colours = {"random batch-mates": COLORS["train"], "batch-mates of its class":
               COLORS["normalized"]}
    for name, (mean, error) in curves.items():
        ax.errorbar(batch_sizes, 100 * np.asarray(mean), yerr=100 * np.asarray(error),
                    marker="o", capsize=3, color=colours.get(name), label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(batch_sizes), [str(b) for b in batch_sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("predictions that change (%)")
    ax.set_title("training mode: the prediction depends on the batch-mates,\n"
                 "less in larger batches, more when they share its class")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return fig


def plot_sorted(labels: Sequence[str], bars: Mapping[str, tuple[Sequence[float],
                                                              Sequence[float]]]):
    """Accuracy of each training recipe, scored several ways (mean and standard error, %)."""
    fig, ax = new_figure(width=7.0, height=3.8)
    colours = [COLORS["train"], COLORS["eval"], COLORS["running"]]
    n = len(bars)
    width = 0.8 / n
    x = np.arange(len(labels))
    for i, (name, (mean, error)) in enumerate(bars.items()):
        ax.bar(x + (i - (n - 1) / 2) * width, 100 * np.asarray(mean), width,
               yerr=100 * np.asarray(error), capsize=2, color=colours[i % len(colours)],
               label=name)
    ax.set_xticks(x, list(labels))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("class-sorted batches: training mode looks fine, eval mode fails")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return fig


def plot_shift(kinds: Sequence[str], severities: Sequence[int],
               results: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
               chance: float):
    """Accuracy against severity, one panel per shift, one line per method (mean, error)."""
    fig, axes = new_figure(ncols=2, nrows=2, width=7.0, height=5.6, sharey=True)
    for ax, kind in zip(axes.flat, kinds, strict=True):
        for method, (mean, error) in results[kind].items():
            ax.errorbar(severities, 100 * np.asarray(mean), yerr=100 * np.asarray(error),
                        marker="o", capsize=2, color=METHOD_COLORS[method],
                        label=METHOD_LABELS[method])
        ax.axhline(100 * chance, color=COLORS["theory"], linestyle=":", label="chance")
        ax.set_title(kind)
        ax.set_xticks(list(severities))
        ax.set_ylim(-3, 103)
    for ax in axes[1]:
        ax.set_xlabel("severity (0: none)")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
    return fig


def plot_batch_size(batch_sizes: Sequence[int],
                    results: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    title: str):
    """Accuracy against the test batch size, one line per method (mean, error)."""
    fig, ax = new_figure(width=7.0, height=3.6)
    for method, (mean, error) in results.items():
        ax.errorbar(batch_sizes, 100 * np.asarray(mean), yerr=100 * np.asarray(error),
                    marker="o", capsize=3, color=METHOD_COLORS[method],
                    label=METHOD_LABELS[method])
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(batch_sizes), [str(b) for b in batch_sizes])
    ax.set_xlabel("test batch size")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return fig
