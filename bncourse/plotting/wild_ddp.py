"""Figure of the section on running statistics under DDP when the ranks' data differ."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from . import COLORS, new_figure

__all__ = ["plot_ddp_options"]


def plot_ddp_options(labels: Sequence[str], accuracy: Sequence[Sequence[float]],
                     highlight: Sequence[bool] | None = None) -> Figure:
    """Union test accuracy per way of getting the statistics: a dot per seed, the mean a bar.

    ``accuracy[i]`` holds option ``labels[i]``'s accuracy (percent) on every seed; options are
    drawn top to bottom in the order given. ``highlight[i]`` marks the options drawn in the
    running-statistics colour (the others in the eval colour).
    """
    if len(labels) != len(accuracy) or not labels:
        raise ValueError("give one row of accuracies per label, and at least one label")
    highlight = [False] * len(labels) if highlight is None else list(highlight)
    fig, ax = new_figure(width=7.0, height=0.42 * len(labels) + 1.4)
    rows = np.arange(len(labels))[::-1]
    for row, values, marked in zip(rows, accuracy, highlight, strict=True):
        values = np.asarray(values, dtype=float)
        colour = COLORS["running"] if marked else COLORS["eval"]
        ax.barh(row, values.mean(), height=0.6, color=colour, alpha=0.35)
        ax.plot(values, np.full(values.shape, row), "o", color=colour, ms=3.5, alpha=0.8)
    ax.set_yticks(rows, list(labels))
    ax.set_xlim(0, 100)
    ax.set_xlabel("test accuracy on clean and shifted test digits (%); a dot per seed, "
                  "the bar the mean")
    ax.grid(axis="y", visible=False)
    ax.set_title("The checkpoint keeps rank 0's statistics, the clean digits'; only statistics\n"
                 "that match how each domain was normalized in training recover the accuracy")
    return fig
