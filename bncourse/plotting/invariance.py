"""Figures of chapter 4: scale invariance, the norm of BN'd weights, and Jacobian spectra."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from ..invariance import TrainingRecord
from . import COLORS, new_figure

__all__ = [
    "plot_scale_deviation",
    "plot_training_runs",
    "plot_layer_spectra",
    "plot_depth",
]

_RUN_COLORS = (COLORS["none"], COLORS["running"], COLORS["input"], COLORS["normalized"])


def plot_scale_deviation(
    scales: np.ndarray, measured: np.ndarray, theory: np.ndarray, a_star: float, eps: float
) -> Figure:
    r"""$\max_i|\mathrm{BN}(X a w) - \mathrm{BN}(X w)|$ against $a$, measured and predicted."""
    fig, ax = new_figure(width=6.4, height=3.6)
    positive = measured > 0
    ax.loglog(scales, np.where(theory > 0, theory, np.nan), color=COLORS["theory"], lw=1.5,
              label="closed-form deviation")
    ax.loglog(scales[positive], measured[positive], "o", color=COLORS["bncourse"], ms=5,
              label="measured, float64")
    ax.axvline(a_star, color=COLORS["none"], ls="--", lw=1)
    ax.text(a_star * 1.3, 1e-2, r"$a^2\sigma^2 = \epsilon$", fontsize=9, color=COLORS["none"])
    ax.set_xlabel("scale a of the weights (dimensionless)")
    ax.set_ylabel("largest change of the output")
    ax.set_title(f"BN(a·w) ≈ BN(w) once a²σ² ≫ ε (here ε = {eps:g})")
    ax.legend(loc="lower left")
    return fig


def plot_training_runs(records: Mapping[str, TrainingRecord]) -> Figure:
    r"""$\|W\|_F$, effective learning rate and angle per step against the step, a line per run."""
    fig, axes = new_figure(ncols=3, width=10.0, height=3.4)
    for (label, rec), colour in zip(records.items(), _RUN_COLORS, strict=False):
        steps = np.arange(rec.row_norms.shape[0])
        axes[0].plot(steps, rec.weight_norm, color=colour, label=label)
        axes[1].plot(steps, rec.effective_lr, color=colour, label=label)
        axes[2].plot(steps[:-1], rec.angular_update, color=colour, lw=0.8, alpha=0.8, label=label)
        if rec.weight_decay > 0:
            p = rec.lr * rec.weight_decay
            axes[2].axhline(np.sqrt(2 * p - p * p), color=COLORS["theory"], ls="--", lw=1.2,
                            label=r"$\sqrt{2\eta\lambda-(\eta\lambda)^2}$")
    axes[0].set_ylabel(r"$\|W\|_F$ of the BN'd weight")
    axes[0].set_title("Norm: grows, or settles with decay")
    axes[1].set_ylabel(r"effective lr, mean of $\eta/\|w_k\|^2$")
    axes[1].set_title("Effective lr: falls, or stays high")
    axes[2].set_ylabel("angle per step (radians)")
    axes[2].set_title("With decay the angle settles")
    fig.suptitle("Weight decay on BN'd weights sets their norm and effective learning rate",
                 fontsize=11)
    for ax in axes:
        ax.set_xlabel("SGD step")
    handles, labels = axes[2].get_legend_handles_labels()
    axes[0].legend(handles, labels, loc="center right")
    return fig


def plot_layer_spectra(spectra: Mapping[str, np.ndarray]) -> Figure:
    r"""Sorted singular values of $J = \mathrm{diag}(1/\sigma) W$, one line per layer shape."""
    fig, ax = new_figure(width=6.4, height=3.6)
    colours = (COLORS["input"], COLORS["normalized"], COLORS["torch"], COLORS["bncourse"])
    for (label, sv), colour in zip(spectra.items(), colours, strict=False):
        ax.plot(np.linspace(0, 1, sv.size), np.sort(sv)[::-1], "o-", ms=3, color=colour,
                label=label)
    ax.axhline(1.0, color=COLORS["theory"], ls="--", lw=1, label="isometry: all equal to 1")
    ax.set_xlabel("position in the sorted spectrum (0 = largest, 1 = smallest)")
    ax.set_ylabel("singular value of J")
    ax.set_title("J Jᵀ = I only when the BN'd outputs are uncorrelated")
    ax.legend(loc="upper right")
    return fig


def plot_depth(
    grad_with_bn: np.ndarray,
    grad_without_bn: np.ndarray,
    sv_with_bn: np.ndarray,
    sv_without_bn: np.ndarray,
    n_show: int = 150,
) -> Figure:
    r"""$\|\partial L/\partial h_l\|$ against $l$, and the top singular values of $J$."""
    fig, axes = new_figure(ncols=2, width=10.0, height=3.6)
    layers = np.arange(grad_with_bn.size)
    axes[0].semilogy(layers, grad_with_bn, "o-", ms=3, color=COLORS["with_bn"], label="with BN")
    axes[0].semilogy(layers, grad_without_bn, "o-", ms=3, color=COLORS["without_bn"],
                     label="without BN (He init)")
    axes[0].set_xlabel("layer l (0 = input)")
    axes[0].set_ylabel(r"$\|\partial L/\partial h_l\|_F$")
    axes[0].set_title("With BN the gradient grows towards the input")
    axes[0].legend()
    idx = np.arange(1, n_show + 1)
    axes[1].semilogy(idx, np.sort(sv_with_bn)[::-1][:n_show], color=COLORS["with_bn"],
                     label="with BN")
    axes[1].semilogy(idx, np.sort(sv_without_bn)[::-1][:n_show], color=COLORS["without_bn"],
                     label="without BN (He init)")
    axes[1].set_xlabel("index of the singular value (largest first)")
    axes[1].set_ylabel("singular value")
    axes[1].set_title("With BN the top singular values are ~100× larger")
    axes[1].legend()
    return fig
