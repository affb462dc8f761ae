"""Figures of chapter 1, the transform."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from . import COLORS, new_figure

__all__ = [
    "plot_depth_scale",
    "plot_unit_input_over_training",
    "plot_batch_dependence",
    "plot_eps_effect",
]


def plot_depth_scale(
    without_bn: Sequence[np.ndarray], with_bn: Sequence[np.ndarray]
) -> Figure:
    """Standard deviation of the pre-activations $z = Wh + b$, layer by layer (log scale),
    in a plain network and in the same network with BN before each ReLU."""
    n = len(without_bn)
    if n == 0 or len(with_bn) != n:
        raise ValueError("give the same positive number of layers for both networks")
    fig, ax = new_figure(width=7.0, height=3.6)
    layers = np.arange(1, n + 1)
    rows = (
        (without_bn, "without_bn", "o", "without BN"),
        (with_bn, "with_bn", "s", "with BN before each ReLU (the input of BN)"),
    )
    for arrays, colour, marker, label in rows:
        stds = [float(np.std(np.asarray(v))) for v in arrays]
        ax.plot(layers, stds, marker=marker, color=COLORS[colour], linewidth=1.8, label=label)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("standard deviation of $z$ (log scale)")
    ax.set_title("At initialization the scale of the pre-activations compounds with depth\n"
                 "without BN; with BN each layer starts again from a standardized input")
    ax.legend(loc="upper left")
    return fig


def plot_unit_input_over_training(traces: Sequence) -> Figure:
    """Percentiles of one unit's pre-activation over the training steps, one panel per
    trace (a :class:`bncourse.networks.UnitTrace`), on a shared vertical axis."""
    if not traces:
        raise ValueError("give at least one trace")
    fig, axes = new_figure(ncols=len(traces), width=7.0, height=4.0, sharey=True)
    axes = np.atleast_1d(axes)
    styles = (":", "-", "--", "-.")
    names = {"none": "without BN: $z$", "before": r"with BN: $\mathrm{BN}(z)$"}
    for ax, trace in zip(axes, traces, strict=True):
        colour = COLORS["with_bn" if trace.placement == "before" else "without_bn"]
        for k, level in enumerate(trace.levels):
            ax.plot(trace.steps, trace.percentiles[:, k], color=colour,
                    linestyle=styles[k % len(styles)], linewidth=1.8,
                    label=f"{level:g}th percentile")
        ax.set_title(names.get(trace.placement, trace.placement))
        ax.set_xlabel("training step")
    axes[0].set_ylabel(f"input of the last ReLU, unit {traces[0].unit}")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncol=len(traces[0].levels))
    fig.suptitle("Internal covariate shift: without BN the input of one unit moves and widens;"
                 "\nwith BN its median barely moves, its spread still changes")
    return fig


def plot_batch_dependence(
    train: Mapping[int, np.ndarray], eval_output: float, example: float
) -> Figure:
    """Histogram of one example's training-mode output over many batches, per batch size,
    against its single eval-mode output."""
    fig, ax = new_figure(width=7.0, height=4.6)
    styles = ("-", "--", ":", "-.")
    for k, (b, outputs) in enumerate(sorted(train.items())):
        ax.hist(
            outputs, bins=40, density=True, histtype="step", linewidth=1.6,
            linestyle=styles[k % len(styles)], color=COLORS["train"],
            label=f"training mode, batch size {b} (std {np.std(outputs):.2f})",
        )
    ax.axvline(eval_output, color=COLORS["eval"], linewidth=2.0,
               label=f"eval mode, any batch ({eval_output:.2f})")
    ax.set_xlabel(rf"BN output of the example $x = {example:g}$")
    ax.set_ylabel("density over batches")
    ax.set_title("In training mode one example's output depends on its batch-mates;\n"
                 "the spread shrinks as the batch grows, and eval mode removes it")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return fig


def plot_eps_effect(
    input_std: np.ndarray, measured: Mapping[float, np.ndarray]
) -> Figure:
    r"""Measured std of $\hat{x}$ against the channel's std, one curve per eps, with the
    prediction $\sigma/\sqrt{\sigma^2 + \epsilon}$."""
    fig, ax = new_figure(width=7.0, height=4.8)
    input_std = np.asarray(input_std)
    grid = np.geomspace(input_std.min(), input_std.max(), 200)
    markers = ("o", "s", "^", "D")
    for k, (eps, out) in enumerate(sorted(measured.items())):
        ax.plot(grid, grid / np.sqrt(grid**2 + eps), color=COLORS["theory"], linewidth=1.0,
                linestyle="--", label=r"$\sigma/\sqrt{\sigma^2+\epsilon}$" if k == 0 else None)
        alpha = 0.4 + 0.6 * k / max(len(measured) - 1, 1)
        ax.plot(input_std, out, linestyle="none", marker=markers[k % len(markers)],
                markersize=5, color=COLORS["normalized"], alpha=alpha,
                label=rf"measured, $\epsilon$ = {eps:g} ($\sqrt{{\epsilon}}$ = {np.sqrt(eps):.2g})")
    ax.set_xscale("log")
    ax.set_xlabel(r"standard deviation $\sigma$ of the channel (input units, log scale)")
    ax.set_ylabel(r"standard deviation of $\hat{x}$")
    ax.set_ylim(-0.03, 1.08)
    ax.set_title(r"eps shrinks channels whose spread is below $\sqrt{\epsilon}$;"
                 "\nchannels well above it come out with std 1")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    return fig
