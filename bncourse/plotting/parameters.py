"""Figures of chapter 3: running statistics, freezing, and the train-only-BN experiment."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from . import COLORS, new_figure

__all__ = ["plot_running_convergence", "plot_drift_while_frozen", "plot_train_only_bn"]

_MOMENTUM_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")

#: Colours of the train-only-BN variants: the shared ones where the course has them.
_VARIANT_COLORS = {
    "all": COLORS["all"],
    "bn_output": "#c44e52",
    "bn_only": COLORS["bn_only"],
    "output_only": "#8172b3",
    "random_subset": COLORS["random_subset"],
    "none": COLORS["none"],
}

_VARIANT_LABELS = {
    "all": "all\nweights",
    "bn_output": "BN γ, β\n+ output layer",
    "bn_only": "BN γ, β\nonly",
    "output_only": "output\nlayer only",
    "random_subset": "random\nweights",
    "none": "nothing",
}


def _momentum_label(momentum: float | None) -> str:
    if momentum is None:
        return "momentum=None (cumulative)"
    return f"momentum={momentum:g} (Keras {1 - momentum:g})"


def plot_running_convergence(
    means: np.ndarray,
    variances: np.ndarray,
    momenta: Sequence[float | None],
    true_mean: float,
    true_var: float,
) -> Figure:
    """Running mean (top) and running variance (bottom) against the batches seen.

    One line per momentum; the dashed lines are the population values. The legend sits
    below the panels, off the data.
    """
    fig, (ax0, ax1) = new_figure(nrows=2, width=7.0, height=6.4, sharex=True)
    k = np.arange(1, means.shape[1] + 1)
    for ax, rows, truth in ((ax0, means, true_mean), (ax1, variances, true_var)):
        for i, momentum in enumerate(momenta):
            ax.plot(k, rows[i], color=_MOMENTUM_COLORS[i % len(_MOMENTUM_COLORS)], lw=1.4,
                    label=_momentum_label(momentum))
        ax.axhline(truth, color=COLORS["theory"], ls="--", lw=1.0, label="population value")
        ax.set_xscale("log")
    ax0.set_ylabel(r"running mean $\hat\mu_k$")
    ax0.set_title("The running mean starts at 0: a small momentum is slow to forget it")
    ax1.set_ylabel(r"running variance $\hat\sigma^2_k$")
    ax1.set_title("The running variance starts at 1: the same bias, towards 1")
    ax1.set_xlabel("training batches seen, k (log scale)")
    handles, labels = ax0.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2)
    return fig


def plot_drift_while_frozen(naive, frozen) -> Figure:
    """Two rows: BN running-mean drift and clean test accuracy against forward passes.

    ``naive`` and ``frozen`` are :class:`bncourse.training.DriftResult` objects; one legend
    below both panels names the two curves of each.
    """
    fig, (ax0, ax1) = new_figure(nrows=2, width=7.0, height=5.6, sharex=True)
    for result, label, color in (
        (naive, "requires_grad_(False) only", COLORS["train"]),
        (frozen, "freeze_batch_norm", COLORS["eval"]),
    ):
        ax0.plot(result.steps, result.drift, color=color, lw=1.6, label=label)
        ax1.plot(result.steps, 100 * result.accuracy, color=color, lw=1.6, label=label)
    ax0.set_ylabel("running-mean drift\n(original std units)")
    ax0.set_title("The running statistics of a 'frozen' model move")
    ax1.set_xlabel("forward passes in train() mode on the new data")
    ax1.set_ylabel("accuracy on the\noriginal test set (%)")
    ax1.set_title("and its predictions on the old task get worse")
    handles, labels = ax0.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2)
    return fig


def plot_train_only_bn(result, chance: float = 0.1) -> Figure:
    """Test accuracy of each variant: one dot per seed, the mean, and its standard error.

    ``result`` is a :class:`bncourse.training.ExperimentResult`. The bar is the mean over
    the seeds; the whisker is plus and minus one standard error of that mean.
    """
    variants = [v for v in _VARIANT_LABELS if v in result.accuracy]
    fig, ax = new_figure(width=7.0, height=4.6)
    for i, variant in enumerate(variants):
        acc = 100 * np.asarray(result.accuracy[variant])
        color = _VARIANT_COLORS[variant]
        mean = acc.mean()
        sem = acc.std(ddof=1) / np.sqrt(acc.size) if acc.size > 1 else 0.0
        ax.bar(i, mean, width=0.6, color=color, alpha=0.3, edgecolor=color,
               label="mean over seeds" if i == 0 else None)
        ax.errorbar(i, mean, yerr=sem, color="black", capsize=7, lw=1.5,
                    label="± one standard error" if i == 0 else None)
        offsets = np.linspace(-0.18, 0.18, acc.size)
        ax.scatter(i + offsets, acc, color=color, s=16, zorder=3, edgecolor="white",
                   linewidth=0.4, label="one seed" if i == 0 else None)
    ax.axhline(100 * chance, color=COLORS["theory"], ls="--", lw=1.0, label="chance")
    ticks = [f"{_VARIANT_LABELS[v]}\n({result.trained.get(v, 0):,})" for v in variants]
    ax.set_xticks(range(len(variants)), ticks)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("what is trained (number of trained values)")
    ax.set_title("Only γ and β trained: above as many random weights and a linear readout")
    fig.legend(loc="outside lower center", ncols=4)
    return fig
