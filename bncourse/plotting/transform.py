"""Figures of chapter 1, the transform."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from . import COLORS, new_figure

__all__ = ["plot_layer_histograms", "plot_batch_dependence", "plot_eps_effect"]


def plot_layer_histograms(
    without_bn: Sequence[np.ndarray], with_bn: Sequence[np.ndarray]
) -> Figure:
    """Histograms, layer by layer, of the pre-activations of a plain network (top row)
    and of the BN outputs of the same network with BN (bottom row)."""
    n = len(without_bn)
    if n == 0 or len(with_bn) != n:
        raise ValueError("give the same positive number of layers for both networks")
    fig, axes = new_figure(ncols=n, nrows=2, width=min(2.5 * n + 0.6, 10.0), height=5.2)
    axes = np.asarray(axes).reshape(2, n)
    rows = (
        (without_bn, "without_bn", "without BN: $z$"),
        (with_bn, "with_bn", r"with BN: $\mathrm{BN}(z)$"),
    )
    for r, (arrays, colour, name) in enumerate(rows):
        for layer, values in enumerate(arrays):
            ax = axes[r, layer]
            v = np.asarray(values).ravel()
            ax.hist(v, bins=60, density=True, color=COLORS[colour], alpha=0.85)
            mean = round(float(v.mean()), 2) + 0.0  # + 0.0 turns -0.0 into 0.0
            ax.set_title(f"layer {layer + 1}, {name}\nmean {mean:.2f}, std {v.std():.3g}",
                         fontsize=9)
            ax.set_xlabel("activation value")
            if layer == 0:
                ax.set_ylabel("density")
    fig.suptitle("Without BN the scale of the pre-activations drifts with depth; "
                 "after BN every layer has mean 0 and std 1")
    return fig


def plot_batch_dependence(
    train: Mapping[int, np.ndarray], eval_output: float, example: float
) -> Figure:
    """Histogram of one example's training-mode output over many batches, per batch size,
    against its single eval-mode output."""
    fig, ax = new_figure(width=7.0, height=3.8)
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
    ax.legend(loc="upper left")
    return fig


def plot_eps_effect(
    input_std: np.ndarray, measured: Mapping[float, np.ndarray]
) -> Figure:
    r"""Measured std of $\hat{x}$ against the channel's std, one curve per eps, with the
    prediction $\sigma/\sqrt{\sigma^2 + \epsilon}$."""
    fig, ax = new_figure(width=7.0, height=3.8)
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
    ax.legend(loc="lower right", fontsize=8)
    return fig
