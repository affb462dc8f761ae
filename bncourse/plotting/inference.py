"""Figures of chapter 5, BN after training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from . import COLORS, new_figure

__all__ = ["FOLD_STYLES", "plot_fold_error", "plot_gap", "plot_batches_needed"]


#: How each float32 model of the folding figure is drawn (the keys of ``float32_fold_error``).
FOLD_STYLES = {
    "unfolded": dict(color=COLORS["input"], marker="o", label="unfolded: conv, then BN"),
    "folded": dict(color=COLORS["bncourse"], marker="s", label=r"folded, $a(c - \hat\mu) + \beta$"),
    "torch": dict(color=COLORS["torch"], marker="x", linestyle="--",
                  label="folded by torch's fuse_conv_bn_eval"),
    "scaled first": dict(color=COLORS["normalized"], marker="^", linestyle=":",
                         label=r"folded, $a c + (\beta - a\hat\mu)$"),
}


def plot_fold_error(by_bias: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    by_input: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    spreads: Sequence[float], by_spread: Mapping[str, Sequence[float]],
                    trained_offset: float):
    """float32 error of folded and unfolded models against the offset and the spread of a.

    ``by_bias`` and ``by_input`` map each model (a key of :data:`FOLD_STYLES`) to its
    (offsets, errors) pairs, for an offset in the layer's bias and one coming from its input;
    ``by_spread`` maps models to errors at each spread. A dotted line marks
    ``trained_offset``, the largest offset of the pre-activations of the trained model the
    chapter measures.
    """
    fig, (ax0, ax1, ax2) = new_figure(ncols=3, width=7.0, height=3.9, sharey=True)
    for ax, curves, title in ((ax0, by_bias, "offset in the layer's bias"),
                              (ax1, by_input, "offset from the input")):
        for name, (offsets, values) in curves.items():
            ax.loglog(offsets, values, **FOLD_STYLES[name])
        ax.axvline(trained_offset, color=COLORS["theory"], linestyle=":", linewidth=1,
                   label="largest offset in the trained digits model")
        ax.set_xlabel("offset, |mean| / std")
        ax.set_title(title)
    for name, values in by_spread.items():
        ax2.semilogy(spreads, values, **{**FOLD_STYLES[name], "label": None})
    ax0.set_ylabel("largest relative error per channel")
    ax2.set_xlabel(r"$s$: $a$ drawn from $10^{-s}$ to $10^{s}$")
    ax2.set_title("spread of the scales a")
    handles, labels = ax0.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2)
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
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return fig


def plot_batches_needed(ks: Sequence[int], accuracy: Sequence[float], error: Sequence[float],
                        running: float, all_batches: float, batch_size: int):
    """Accuracy of one model after re-estimating its statistics on K batches (mean, error)."""
    fig, ax = new_figure(width=7.0, height=3.6)
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
    ax.set_title("for one model: one batch scores lower; from two on, no difference\n"
                 "from all of them is detectable")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return fig
