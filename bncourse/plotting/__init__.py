"""Figures of the course: the one place that imports matplotlib.

The same quantity has the same colour in every chapter (``COLORS``); every figure has
labelled axes and a title that states its finding. Chapter-specific figures live in the
submodules ``transform``, ``gradients``, ``parameters`` and ``invariance``.

Figures are drawn for the book's page, 688 CSS pixels wide: at most ``MAX_WIDTH`` inches
wide at 100 logical dpi, so that a 10-point label is about 13 CSS pixels tall, and shown
in a notebook as 2x ("retina") PNGs, sharp on high-density screens. Their background is
white; the site's stylesheet decides how they sit on a dark page.
"""

from __future__ import annotations

import matplotlib

matplotlib.rcParams.update(
    {
        "figure.figsize": (7.0, 3.6),
        "figure.dpi": 100,
        "savefig.dpi": 200,
        "figure.facecolor": "white",
        "savefig.facecolor": "white",
        "font.size": 10,
        "xtick.labelsize": 10,
        "ytick.labelsize": 10,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 11,
        "axes.labelsize": 10.5,
        "legend.fontsize": 10,
        "legend.frameon": False,
        "svg.hashsalt": "bncourse",
    }
)

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["COLORS", "MAX_WIDTH", "plt", "new_figure"]

#: The widest figure, in inches at 100 logical dpi: the width of the book's page.
MAX_WIDTH = 7.0


def _use_retina() -> None:
    """In a running IPython kernel, show figures as 2x PNGs (logical size kept in metadata)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if get_ipython() is None:
        return
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    set_matplotlib_formats("retina")


_use_retina()

#: One colour per quantity, used across all chapters.
COLORS = {
    "input": "#4c72b0",  # x, pre-activations before BN
    "normalized": "#dd8452",  # x_hat, outputs of BN
    "bncourse": "#55a868",  # bncourse's implementation
    "torch": "#c44e52",  # torch's native layer
    "staged": "#8172b3",  # autograd through the staged formula
    "compiled": "#937860",  # the compiled compact form
    "train": "#55a868",  # training mode, batch statistics
    "eval": "#4c72b0",  # eval mode, running statistics
    "running": "#da8bc3",  # running statistics
    "bn_only": "#dd8452",  # train-only-BN networks
    "all": "#55a868",  # all weights trained
    "none": "#8c8c8c",  # nothing trained
    "random_subset": "#4c72b0",  # random non-BN parameters trained
    "with_bn": "#dd8452",
    "without_bn": "#4c72b0",
    "theory": "#333333",  # a formula's prediction
}


def new_figure(ncols: int = 1, nrows: int = 1, width: float | None = None,
               height: float | None = None, **kwargs):
    """``plt.subplots`` with the course's default size, scaled to the number of panels.

    The width never exceeds ``MAX_WIDTH``: a wider figure would be shrunk on the page and
    its labels with it. Use more rows instead of more columns.
    """
    if width is not None and width > MAX_WIDTH:
        raise ValueError(f"a figure {width} in wide would be shrunk on the page; the most is "
                         f"MAX_WIDTH = {MAX_WIDTH} in (use more rows)")
    w = width if width is not None else min(3.4 * ncols + 0.4, MAX_WIDTH)
    h = height if height is not None else 3.2 * nrows + 0.4
    return plt.subplots(nrows, ncols, figsize=(w, h), constrained_layout=True, **kwargs)
