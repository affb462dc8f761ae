"""Figures of chapter 5, BN after training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from . import COLORS, new_figure

__all__ = ["plot_fold_error", "plot_gap", "plot_batches_needed"]


def plot_fold_error(errors: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    spreads: Sequence[float], spread_errors: Mapping[str, Sequence[float]]):
    """float32 error of folded and unfolded models against the offset and the spread of a.

    ``errors`` maps each model to its (offsets, errors) pairs.
    """
    fig, (ax0, ax1) = new_figure(ncols=2, width=7.0, height=3.6, sharey=True)
    styles = {
        "unfolded": dict(color=COLORS["input"], marker="o"),
        "folded in float32": dict(color=COLORS["normalized"], marker="s"),
        "folded in float64, offset in the bias": dict(color=COLORS["bncourse"], marker="^"),
        "folded in float64, offset in the input": dict(color=COLORS["theory"], marker="v",
                                                       linestyle="--"),
    }
    for name, (offsets, values) in errors.items():
        ax0.loglog(offsets, values, label=name, **styles[name])
    for name, values in spread_errors.items():
        ax1.semilogy(spreads, values, **styles[name])
    ax0.set_xlabel("offset of the pre-activations, |mean| / std")
    ax0.set_ylabel("largest relative error per channel")
    ax0.set_title("cancellation grows the error")
    ax1.set_xlabel("spread of a: log10(max a / min a) / 2")
    ax1.set_title("the spread of a does not")
    fig.legend(*ax0.get_legend_handles_labels(), loc="outside lower center", ncols=2,
               fontsize=9)
    return fig


def plot_gap(labels: Sequence[str], accuracies: Mapping[str, Sequence[float]],
             errors: Mapping[str, Sequence[float]]):
    """Test accuracy of each training recipe, evaluated several ways (mean and standard error)."""
    fig, ax = new_figure(width=7.0, height=4.2)
    colours = [COLORS["train"], COLORS["running"], COLORS["normalized"], COLORS["eval"]]
    n = len(accuracies)
    width = 0.8 / n
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(accuracies.items()):
        ax.bar(x + (i - (n - 1) / 2) * width, values, width, yerr=errors[name], capsize=2,
               color=colours[i % len(colours)], label=name)
    ax.set_xticks(x, [label.replace(", ", "\n") for label in labels])
    ax.set_ylabel("test accuracy (%)")
    low = min(min(v) for v in accuracies.values())
    high = max(max(v) for v in accuracies.values())
    ax.set_ylim(max(0.0, low - 3.0), min(100.0, high + 2.0))
    ax.set_title("the same weights, four ways of normalizing at test time")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2,
               fontsize=9)
    return fig


def plot_batches_needed(ks: Sequence[int], accuracy: Sequence[float], error: Sequence[float],
                        running: float, all_batches: float, batch_size: int):
    """Accuracy after re-estimating the statistics on K batches."""
    fig, ax = new_figure(width=7.0, height=3.4)
    ax.errorbar(ks, accuracy, yerr=error, color=COLORS["eval"], marker="o", capsize=3,
                label="re-estimated on K batches")
    ax.axhline(running, color=COLORS["running"], linestyle="--",
               label="running statistics from training")
    ax.axhline(all_batches, color=COLORS["theory"], linestyle=":",
               label="re-estimated on every training batch")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_xlabel(f"number of batches K ({batch_size} examples each)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("about ten batches do as well as the whole training set")
    ax.legend(loc="lower right", fontsize=9)
    return fig
