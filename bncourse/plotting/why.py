"""Figures of chapter 8, first part: covariate shift, learning rates, initialization, landscape."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from . import COLORS, new_figure

__all__ = ["NET_COLORS", "NET_LABELS", "plot_covariate_shift", "plot_learning_rates",
           "plot_init_scale", "plot_landscape"]

#: One colour per network: BN and the plain network as in every chapter, noisy BN its own.
NET_COLORS = {"bn": COLORS["with_bn"], "none": COLORS["without_bn"], "noisy": "#c44e52",
              "bn_hidden": "#937860"}

NET_LABELS = {"bn": "BN", "none": "no BN", "noisy": "noisy BN",
              "bn_hidden": "BN, last layer at default scale"}


def _band(ax, x, values, key, label):
    # NaN marks a seed's run that has stopped (diverged): the rest of the seeds carry on.
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.all(np.isnan(v), axis=0)
    x, v = np.asarray(x)[keep], v[:, keep]
    ax.plot(x, np.nanmedian(v, axis=0), color=NET_COLORS[key], lw=1.6, label=label)
    ax.fill_between(x, np.nanmin(v, axis=0), np.nanmax(v, axis=0), color=NET_COLORS[key],
                    alpha=0.2, lw=0)


def plot_covariate_shift(shift: dict[str, Sequence[float]], steps: Sequence[int],
                         cosine: dict[str, np.ndarray], layer: int) -> Figure:
    """Left: the step-to-step shift of a layer's input, per network (mean ± s.e. over seeds).
    Right: the cosine between a layer's gradient before and after the layers before it take
    their step, over training (median over seeds, band from the smallest to the largest).

    ``cosine[norm]`` has shape ``(seeds, probes)`` for linear layer ``layer``.
    """
    fig, (ax0, ax1) = new_figure(ncols=2, width=7.0, height=3.4)
    names = [k for k in ("none", "bn", "noisy") if k in shift]
    means = [np.mean(shift[k]) for k in names]
    errs = [np.std(shift[k], ddof=1) / np.sqrt(len(shift[k])) for k in names]
    ax0.bar(range(len(names)), means, yerr=errs, color=[NET_COLORS[k] for k in names],
            capsize=3)
    ax0.set_xticks(range(len(names)), [NET_LABELS[k] for k in names])
    ax0.set_ylabel("shift of the mean per step\n(in standard deviations)")
    ax0.set_title("What the third layer receives moves")
    for k in ("none", "bn"):
        _band(ax1, steps, cosine[k], k, NET_LABELS[k])
    ax1.set_xlabel("training step")
    ax1.set_ylabel(f"cosine, gradient of layer {layer + 1}\nbefore and after the update")
    ax1.set_title("Gradient-based shift")
    ax1.legend(loc="lower left")
    return fig


def plot_learning_rates(lrs: Sequence[float], accuracy: dict[str, np.ndarray],
                        grad_norms: dict[str, np.ndarray], high_lr: float) -> Figure:
    """Top: mean validation accuracy against the learning rate, per network (error bars: one
    standard error over seeds). Bottom: the gradient norm of the first steps at ``high_lr``
    (median over the seeds whose run has not diverged yet, band from the smallest to the
    largest); ``grad_norms[norm]`` is ``(seeds, steps)``, ``inf`` after a run diverged."""
    fig, (ax0, ax1) = new_figure(nrows=2, width=7.0, height=6.0)
    for k, acc in accuracy.items():
        a = 100 * np.asarray(acc)
        ax0.errorbar(lrs, a.mean(axis=1), yerr=a.std(axis=1, ddof=1) / np.sqrt(a.shape[1]),
                     color=NET_COLORS[k], marker="o", ms=4, lw=1.4, capsize=2,
                     label=NET_LABELS[k])
    ax0.set_xscale("log")
    ax0.set_xlabel("learning rate (plain SGD)")
    ax0.set_ylabel("validation accuracy (%)")
    ax0.set_title("Accuracy after 10 epochs; 10% is a guess (diverged)")
    ax0.legend(loc="center left")
    for k, g in grad_norms.items():
        g = np.asarray(g, dtype=np.float64)
        finite = np.where(np.isfinite(g), g, np.nan)
        _band(ax1, np.arange(g.shape[1]), finite, k, NET_LABELS[k])
    ax1.set_yscale("log")
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax1.set_xlabel("training step")
    ax1.set_ylabel("gradient norm")
    ax1.set_title(f"The first steps at learning rate {high_lr:g}")
    ax1.legend(loc="upper left")
    return fig


def plot_init_scale(scales: Sequence[float], accuracy: dict[str, np.ndarray]) -> Figure:
    """Mean validation accuracy against the multiplier of the initial weights, per network."""
    fig, ax = new_figure(width=7.0, height=3.6)
    for k, acc in accuracy.items():
        a = 100 * np.asarray(acc)
        ax.errorbar(scales, a.mean(axis=1), yerr=a.std(axis=1, ddof=1) / np.sqrt(a.shape[1]),
                    color=NET_COLORS[k], marker="o", ms=4, lw=1.4, capsize=2,
                    label=NET_LABELS[k])
    ax.set_xscale("log")
    ax.set_xlabel("multiplier of every initial weight")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy after 10 epochs against the initial scale")
    ax.legend(loc="center left")
    return fig


def plot_landscape(steps: Sequence[int], traj: dict[str, dict[str, np.ndarray]]) -> Figure:
    """Loss range (top) and effective beta-smoothness (bottom) along the trajectory, per
    network (median over seeds, band from the smallest to the largest)."""
    fig, (ax0, ax1) = new_figure(nrows=2, width=7.0, height=6.0, sharex=True)
    for k in ("none", "bn"):
        _band(ax0, steps, np.maximum(traj[k]["loss_range"], 1e-6), k, NET_LABELS[k])
        _band(ax1, steps, traj[k]["beta"], k, NET_LABELS[k])
    ax0.set_yscale("log")
    ax0.set_ylabel("loss range along\nthe gradient")
    ax0.set_title("Moving along the gradient, at each probe of the run")
    ax0.legend(loc="upper right")
    ax1.set_yscale("log")
    ax1.set_ylabel("effective\nβ-smoothness")
    ax1.set_xlabel("training step")
    return fig
