"""Figures of chapter 8's second part: gradients over the first steps, the regularizer
variants, rank collapse against depth, and residual networks without BN."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter

from . import COLORS, new_figure

__all__ = ["plot_gradient_steps", "plot_regularizer", "plot_rank", "plot_alternatives"]

_ARCH_COLORS = {"plain": COLORS["with_bn"], "residual": COLORS["bncourse"],
                "pinned": COLORS["staged"]}
_ARCH_LABELS = {"plain": "plain, BN", "residual": "residual, BN",
                "pinned": "plain, BN, norms pinned"}
_VARIANT_COLORS = {"bn": COLORS["with_bn"], "skipinit": COLORS["bncourse"],
                   "ws_agc": COLORS["staged"], "none": COLORS["none"]}


def _mean_se(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    return a.mean(axis=0), a.std(axis=0, ddof=1) / np.sqrt(a.shape[0])


def plot_gradient_steps(steps: Sequence[int], ratios: Mapping[str, np.ndarray], depth: int):
    """Ratio of the first to the last hidden layer's gradient norm against the step (log y),
    mean over seeds with its standard error, one curve per architecture (``"pinned"``: the
    plain network with its hidden weights rescaled to their initial norms after each step)."""
    fig, ax = new_figure(height=3.4)
    x = np.asarray(steps) + 1
    for arch, r in ratios.items():
        m, se = _mean_se(np.log10(r))
        ax.errorbar(x, 10**m, yerr=[10**m - 10**(m - se), 10**(m + se) - 10**m], marker="o",
                    color=_ARCH_COLORS.get(arch, COLORS["theory"]),
                    ls="--" if arch == "pinned" else "-", label=_ARCH_LABELS.get(arch, arch))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(x, [str(s) for s in steps])
    ax.axhline(1.0, color=COLORS["theory"], lw=0.8, ls=":")
    ax.set_xlabel("SGD steps taken")
    ax.set_ylabel("|grad W_1| / |grad W_L|")
    ax.set_title(f"{depth} blocks: the first layer's excess gradient is spent in a few steps")
    ax.legend(loc="upper right")
    return fig


def plot_regularizer(variants: Sequence[str], labels: Mapping[str, str],
                     test: Mapping[str, np.ndarray], gap: Mapping[str, np.ndarray]):
    """Test accuracy and train-test gap (percent) per variant, mean with its standard error."""
    fig, axes = new_figure(ncols=2, height=3.4)
    y = np.arange(len(variants))[::-1]
    for ax, values, title in ((axes[0], test, "test accuracy (%)"),
                              (axes[1], gap, "train - test accuracy (points)")):
        for yi, v in zip(y, variants, strict=True):
            m, se = _mean_se(100 * np.asarray(values[v])[:, None])
            color = COLORS["with_bn"] if v.startswith("bn") else COLORS["without_bn"]
            ax.errorbar(m[0], yi, xerr=se[0], marker="o", color=color)
        ax.set_yticks(y, [labels[v] for v in variants])
        ax.set_xlabel(title)
    axes[1].set_yticklabels([])
    fig.suptitle("Small training set: what each source of regularization does")
    return fig


def plot_rank(depths: np.ndarray, curves: Mapping[tuple[str, bool], np.ndarray], width: int):
    """Stable rank against depth, with and without BN, one panel per activation."""
    activations = sorted({a for a, _ in curves})
    fig, axes = new_figure(ncols=len(activations), height=3.4)
    axes = np.atleast_1d(axes)
    for ax, act in zip(axes, activations, strict=True):
        for bn in (True, False):
            m, se = _mean_se(curves[(act, bn)])
            color = COLORS["with_bn"] if bn else COLORS["without_bn"]
            ax.plot(depths, m, color=color, label="with BN" if bn else "without BN")
            ax.fill_between(depths, m - se, m + se, color=color, alpha=0.25)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks([1, 2, 4, 8])
        ax.set_xlabel("depth (layers)")
        ax.set_title(f"{act} layers, width {width}")
    axes[0].set_ylabel("stable rank of the batch")
    axes[0].legend(loc="upper right")
    return fig


def plot_alternatives(lrs: Sequence[float], validation: Mapping[str, np.ndarray],
                      labels: Mapping[str, str]):
    """Validation accuracy against the learning rate, one curve per residual variant."""
    fig, ax = new_figure(width=5.6, height=3.4)
    for v, acc in validation.items():
        m, se = _mean_se(100 * np.asarray(acc).T)
        ax.errorbar(lrs, m, yerr=se, marker="o", color=_VARIANT_COLORS.get(v, COLORS["theory"]),
                    label=labels[v])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (SGD, momentum 0.9)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Residual MLPs with and without BN, by learning rate")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig
