"""Figures of chapter 4: scale invariance, the norm of BN'd weights, and Jacobian spectra."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from ..invariance import TrainingRecord, equilibrium_angular_update
from . import COLORS, new_figure

__all__ = [
    "plot_scale_deviation",
    "plot_training_runs",
    "plot_layer_spectra",
    "plot_depth",
]

_RUN_COLORS = (COLORS["none"], COLORS["running"], COLORS["input"], COLORS["normalized"])
#: The residual network of the depth figure (no quantity of the other chapters uses it).
_RESIDUAL = "#8172b3"


def plot_scale_deviation(
    scales: np.ndarray, measured: np.ndarray, theory_scales: np.ndarray, theory: np.ndarray,
    a_star: float, eps: float,
) -> Figure:
    r"""$\max_i|\mathrm{BN}(X a w)_i - \mathrm{BN}(X w)_i|$ against $a$, measured and predicted.

    ``measured`` is taken at ``scales``, the closed form at the (denser) ``theory_scales``.
    Both are 0 at $a = 1$, which a log scale cannot show: a dotted line marks it.
    """
    fig, ax = new_figure(width=6.4, height=3.8)
    positive = measured > 0
    ax.loglog(theory_scales, np.where(theory > 0, theory, np.nan), color=COLORS["theory"],
              lw=1.5, label="closed form", zorder=2)
    ax.loglog(scales[positive], measured[positive], "o", color=COLORS["bncourse"], ms=4,
              label="measured, float64", zorder=3)
    ax.axvline(a_star, color=COLORS["none"], ls="--", lw=1)
    ax.axvline(1.0, color=COLORS["none"], ls=":", lw=1)
    top = float(np.nanmax(theory))
    ax.text(a_star * 1.3, 2e-6 * top, r"$a^2\sigma_B^2 = \epsilon$", color=COLORS["none"])
    ax.text(1.3, top * 0.02, "a = 1:\ndeviation 0", color=COLORS["none"])
    ax.set_xlabel("scale a of the weights (dimensionless)")
    ax.set_ylabel(r"$\max_i\,|\mathrm{BN}(a w)_i - \mathrm{BN}(w)_i|$")
    ax.set_title(f"BN(a·w) ≈ BN(w) once a²σ² ≫ ε (here ε = {eps:g})")
    ax.legend(loc="lower left")
    return fig


def plot_training_runs(records: Mapping[str, TrainingRecord]) -> Figure:
    r"""$\|W\|_F$, effective learning rate and angle per step against the step: three rows.

    Each panel's legend lists only the lines drawn in it; the equilibrium angle
    $\arccos(1 - \eta\lambda)$ (:func:`bncourse.invariance.equilibrium_angular_update`) is
    drawn in the third panel for every run with weight decay.
    """
    fig, axes = new_figure(nrows=3, width=6.4, height=8.0, sharex=True)
    for (label, rec), colour in zip(records.items(), _RUN_COLORS, strict=False):
        steps = np.arange(rec.row_norms.shape[0])
        axes[0].plot(steps, rec.weight_norm, color=colour, label=label)
        axes[1].plot(steps, rec.effective_lr, color=colour, label=label)
        axes[2].plot(steps[:-1], rec.angular_update, color=colour, lw=0.8, alpha=0.9,
                     label=label)
    for label, rec in records.items():
        if rec.weight_decay > 0:
            axes[2].axhline(equilibrium_angular_update(rec.lr, rec.weight_decay),
                            color=COLORS["theory"], ls="--", lw=1.3,
                            label=rf"equilibrium $\arccos(1-\eta\lambda)$, {label}")
    axes[0].set_ylabel(r"$\|W\|_F$")
    axes[0].set_title("The norm of the BN'd weight grows, or settles with decay")
    axes[1].set_ylabel(r"mean of $\eta/\|w_k\|^2$")
    axes[1].set_title("Its effective learning rate (SGD) falls, or stays high")
    axes[2].set_ylabel("mean angle per step (rad)")
    axes[2].set_title("With decay the angle per step settles near its equilibrium")
    axes[0].legend(loc="center right")
    axes[1].legend(loc="center right")
    top = max(float(np.max(rec.angular_update)) for rec in records.values())
    axes[2].set_ylim(0.0, 1.8 * top)  # room for the legend above the data
    axes[2].legend(loc="upper left")
    for ax in axes:
        ax.set_xlabel("SGD step")
        ax.xaxis.set_tick_params(labelbottom=True)
    return fig


def plot_layer_spectra(spectra: Mapping[str, np.ndarray]) -> Figure:
    r"""Sorted singular values of $J = \mathrm{diag}(1/\sigma) W$, one line per layer shape.

    A spectrum equal to 1 everywhere (an isometry) is drawn with open markers on top of the
    reference line, so that neither hides the other.
    """
    fig, ax = new_figure(width=6.4, height=4.0)
    colours = (COLORS["input"], COLORS["normalized"], COLORS["torch"], COLORS["bncourse"])
    ax.axhline(1.0, color=COLORS["theory"], ls=":", lw=1, zorder=1,
               label="isometry: every value 1")
    for (label, sv), colour in zip(spectra.items(), colours, strict=False):
        values = np.sort(sv)[::-1]
        flat = np.allclose(values, 1.0, atol=1e-8)
        ax.plot(np.linspace(0, 1, sv.size), values, "s" if flat else "o-", ms=7 if flat else 3,
                mfc="none" if flat else colour, mew=1.5 if flat else 1, color=colour,
                zorder=3 if flat else 2, label=label)
    ax.set_xlabel("position in the sorted spectrum (0 = largest, 1 = smallest)")
    ax.set_ylabel("singular value of J")
    ax.set_title("J Jᵀ = I only when the BN'd outputs are uncorrelated")
    ax.legend(loc="lower left")
    return fig


_DEPTH_COLORS = (COLORS["with_bn"], COLORS["without_bn"], _RESIDUAL)


def plot_depth(
    grads: Mapping[str, np.ndarray], spectra: Mapping[str, np.ndarray],
    zero: float = 1e-12,
) -> Figure:
    r"""Two rows: $\|\partial L/\partial h_l\|$ against $l$, and every singular value of $J$.

    ``grads`` and ``spectra`` map a network's name to its gradient norms by layer and to the
    singular values of its input-output Jacobian, in the order: BN without skip
    connections, no BN, BN with skip connections (coloured in that order). Every singular
    value is drawn; a dashed line in each network's colour marks ``zero`` times that
    network's own largest value: the values below it are numerically zero.
    """
    fig, axes = new_figure(nrows=2, width=6.4, height=8.2)
    for (name, g), colour in zip(grads.items(), _DEPTH_COLORS, strict=False):
        axes[0].semilogy(np.arange(g.size), g, "o-", ms=3, color=colour, label=name)
    axes[0].set_xlabel("layer l (0 = input)")
    axes[0].set_ylabel(r"$\|\partial L/\partial h_l\|_F$")
    axes[0].set_title("Without skips, BN makes the gradient grow towards the input")
    axes[0].legend(loc="upper right")
    largest = max(float(np.max(sv)) for sv in spectra.values())
    tiny = 1e-30
    lowest = min(float(np.min(np.maximum(sv, tiny))) for sv in spectra.values())
    for (name, sv), colour in zip(spectra.items(), _DEPTH_COLORS, strict=False):
        values = np.maximum(np.sort(sv)[::-1], tiny)
        axes[1].semilogy(np.arange(1, values.size + 1), values, lw=1.8, color=colour,
                         label=name)
        axes[1].axhline(zero * float(np.max(sv)), color=colour, ls="--", lw=1)
    axes[1].plot([], [], color=COLORS["none"], ls="--", lw=1,
                 label=f"{zero:.0e} × the network's largest: below it, numerically zero")
    axes[1].set_ylim(lowest / 10, largest * 10)
    axes[1].set_xlabel("index of the singular value (largest first), all of them")
    axes[1].set_ylabel("singular value of J")
    axes[1].set_title("Without skips, BN's Jacobian has the largest singular values")
    axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return fig
