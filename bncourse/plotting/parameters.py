"""Figures of chapter 3: running statistics, freezing, and the train-only-BN experiment."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from . import COLORS, new_figure

__all__ = ["plot_running_convergence", "plot_drift_while_frozen", "plot_train_only_bn"]

_MOMENTUM_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def _momentum_label(momentum: float | None) -> str:
    if momentum is None:
        return "momentum=None (cumulative)"
    return f"momentum={momentum:g} (Keras {1 - momentum:g})"


def plot_running_convergence(
    trajectories: np.ndarray, momenta: Sequence[float | None], true_mean: float
) -> Figure:
    """Running mean against the number of training batches, one line per momentum."""
    fig, ax = new_figure(width=7.0, height=3.8)
    k = np.arange(1, trajectories.shape[1] + 1)
    for i, momentum in enumerate(momenta):
        ax.plot(k, trajectories[i], color=_MOMENTUM_COLORS[i % len(_MOMENTUM_COLORS)],
                lw=1.4, label=_momentum_label(momentum))
    ax.axhline(true_mean, color=COLORS["theory"], ls="--", lw=1.0, label="population mean")
    ax.set_xscale("log")
    ax.set_xlabel("training batches seen, k (log scale)")
    ax.set_ylabel(r"running mean $\hat\mu_k$")
    ax.set_title("A small momentum converges slowly but steadily; a large one is fast but noisy")
    ax.legend(loc="lower right")
    return fig


def plot_drift_while_frozen(naive, frozen) -> Figure:
    """Two panels: BN running-mean drift and clean test accuracy against forward passes.

    ``naive`` and ``frozen`` are :class:`bncourse.training.DriftResult` objects.
    """
    fig, (ax0, ax1) = new_figure(ncols=2, width=9.0, height=3.6)
    for result, label, color in (
        (naive, "requires_grad_(False) only", COLORS["train"]),
        (frozen, "freeze_batch_norm", COLORS["eval"]),
    ):
        ax0.plot(result.steps, result.drift, color=color, lw=1.6, label=label)
        ax1.plot(result.steps, 100 * result.accuracy, color=color, lw=1.6, label=label)
    ax0.set_xlabel("forward passes in train() mode on the new data")
    ax0.set_ylabel("running-mean drift\n(original running std units)")
    ax0.set_title("The running statistics of a 'frozen' model move")
    ax1.set_xlabel("forward passes in train() mode on the new data")
    ax1.set_ylabel("accuracy on the original test set (%)")
    ax1.set_title("and its predictions on the old task change")
    ax1.legend(loc="lower left")
    return fig


def plot_train_only_bn(result, chance: float = 0.1) -> Figure:
    """Test accuracy of each variant of the train-only-BN experiment: seeds and their mean.

    ``result`` is a :class:`bncourse.training.ExperimentResult`.
    """
    labels = {
        "all": "all weights",
        "bn_only": "only BN's γ, β",
        "random_subset": "same number of\nrandom other weights",
        "none": "nothing",
    }
    variants = [v for v in ("all", "bn_only", "random_subset", "none") if v in result.accuracy]
    fig, ax = new_figure(width=7.0, height=3.8)
    for i, variant in enumerate(variants):
        acc = 100 * np.asarray(result.accuracy[variant])
        color = COLORS[variant]
        ax.bar(i, acc.mean(), width=0.6, color=color, alpha=0.35, edgecolor=color)
        ax.errorbar(i, acc.mean(), yerr=[[acc.mean() - acc.min()], [acc.max() - acc.mean()]],
                    color=color, capsize=6, lw=1.5)
        offsets = np.linspace(-0.12, 0.12, len(acc))
        ax.scatter(i + offsets, acc, color=color, s=22, zorder=3)
        trained = result.trained.get(variant, 0)
        ax.text(i, acc.max() + 2.0, f"{acc.mean():.1f}%\n{trained:,} trained", ha="center",
                va="bottom", fontsize=8)
    ax.axhline(100 * chance, color=COLORS["theory"], ls="--", lw=1.0, label="chance (10%)")
    ax.set_xticks(range(len(variants)), [labels[v] for v in variants])
    ax.set_ylim(0, 118)
    ax.set_ylabel("test accuracy on the digits (%)")
    ax.set_title("Only γ and β trained: far above chance, and above as many random weights")
    ax.legend(loc="upper right")
    return fig
