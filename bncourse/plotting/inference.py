"""Figures of chapter 5, BN after training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from . import COLORS, new_figure

__all__ = ["plot_fold_error", "plot_gap", "plot_batches_needed"]


def plot_fold_error(offsets: Sequence[float], errors: Mapping[str, Sequence[float]],
                    spreads: Sequence[float], spread_errors: Mapping[str, Sequence[float]]):
    """float32 error of folded and unfolded models against the offset and the spread of a."""
    fig, (ax0, ax1) = new_figure(ncols=2, width=7.0, height=3.4, sharey=True)
    styles = {
        "unfolded": dict(color=COLORS["input"], marker="o"),
        "folded in float32": dict(color=COLORS["normalized"], marker="s"),
        "folded in float64, then rounded": dict(color=COLORS["bncourse"], marker="^"),
    }
    for name, values in errors.items():
        ax0.loglog(offsets, values, label=name, **styles[name])
    for name, values in spread_errors.items():
        ax1.semilogy(spreads, values, **styles[name])
    ax0.set_xlabel("offset of the pre-activations |mean| / std")
    ax0.set_ylabel("largest relative error per channel")
    ax0.set_title("cancellation grows the error")
    ax1.set_xlabel("spread of a: log10(max a / min a) / 2")
    ax1.set_title("the spread of a does not")
    ax0.legend(loc="upper left", fontsize=9)
    return fig


def plot_gap(labels: Sequence[str], accuracies: Mapping[str, Sequence[float]],
             errors: Mapping[str, Sequence[float]]):
    """Test accuracy of each training recipe, evaluated three ways (mean and standard error)."""
    fig, ax = new_figure(width=7.0, height=3.6)
    colours = {"train mode (batch statistics)": COLORS["train"],
               "eval, running statistics": COLORS["running"],
               "eval, re-estimated statistics": COLORS["eval"]}
    width = 0.26
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(accuracies.items()):
        ax.bar(x + (i - 1) * width, values, width, yerr=errors[name], capsize=3,
               color=colours[name], label=name)
    ax.set_xticks(x, [label.replace(", ", "\n") for label in labels])
    ax.set_ylabel("test accuracy (%)")
    low = min(min(v) for v in accuracies.values())
    high = max(max(v) for v in accuracies.values())
    ax.set_ylim(max(0.0, low - 4.0), high + 9.0)
    ax.set_title("a lagging running average costs accuracy; re-estimating restores it")
    ax.legend(loc="upper left", fontsize=9, ncols=1)
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
