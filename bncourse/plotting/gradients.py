"""Figures of the gradients chapter: forward graph, finite differences, a wrong gradient, cost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from . import COLORS, new_figure

__all__ = ["plot_forward_graph", "plot_fd_sweep", "plot_constants_error", "plot_cost"]

# Node name -> (x, y, label, colour key) of the forward graph.
_NODES: dict[str, tuple[float, float, str, str]] = {
    "x": (0.0, 1.0, r"$x$", "input"),
    "mu": (1.6, 2.2, r"$\mu_B = \frac{1}{m}\sum_i x_i$", "running"),
    "c": (3.2, 1.0, r"$c = x - \mu_B$", "theory"),
    "v": (4.4, 2.2, r"$\sigma_B^2 = \frac{1}{m}\sum_i c_i^2$", "running"),
    "s": (6.6, 2.2, r"$s = (\sigma_B^2 + \epsilon)^{-1/2}$", "running"),
    "xhat": (6.6, 1.0, r"$\hat{x} = c\,s$", "normalized"),
    "gamma": (8.4, 2.2, r"$\gamma,\ \beta$", "bncourse"),
    "y": (8.4, 1.0, r"$y = \gamma\hat{x} + \beta$", "normalized"),
    "L": (10.0, 1.0, r"$L$", "theory"),
}
_EDGES: tuple[tuple[str, str], ...] = (
    ("x", "mu"), ("x", "c"), ("mu", "c"), ("c", "v"), ("v", "s"), ("c", "xhat"),
    ("s", "xhat"), ("xhat", "y"), ("gamma", "y"), ("y", "L"),
)


def plot_forward_graph() -> Figure:
    """The training-mode forward pass as a graph: the nodes backpropagation visits in reverse."""
    fig, ax = new_figure(width=9.0, height=2.9)
    ax.set_axis_off()
    ax.grid(False)
    boxes = {}
    for name, (x, y, label, colour) in _NODES.items():
        boxes[name] = ax.text(
            x, y, label, ha="center", va="center", fontsize=10,
            bbox={"boxstyle": "round,pad=0.35", "facecolor": "white",
                  "edgecolor": COLORS[colour], "linewidth": 1.8},
        )
    for a, b in _EDGES:
        ax.annotate(
            "", xy=(0.5, 0.5), xycoords=boxes[b], xytext=(0.5, 0.5), textcoords=boxes[a],
            arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 1.2,
                        "patchA": boxes[a].get_bbox_patch(),
                        "patchB": boxes[b].get_bbox_patch(), "shrinkA": 2, "shrinkB": 2},
        )
    ax.text(5.0, 2.75, "top row: per-channel vectors (statistics, parameters)", ha="center",
            fontsize=8, color="#555555")
    ax.text(5.0, 0.35, "bottom row: tensors the size of the input", ha="center", fontsize=8,
            color="#555555")
    ax.set_xlim(-0.5, 10.5)
    ax.set_ylim(0.1, 3.0)
    ax.set_title(r"The forward graph: $x$ reaches $\hat{x}$ directly, through $\mu_B$, "
                 r"and through $\sigma_B^2$")
    return fig


def plot_fd_sweep(hs: Sequence[float], errors64: Sequence[float],
                  errors32: Sequence[float] | None = None) -> Figure:
    """Central-difference error vs $h$: $O(h^2)$ truncation, $O(\\varepsilon/h)$ round-off."""
    fig, ax = new_figure(width=7.0, height=4.2)
    hs = np.asarray(hs, dtype=float)
    e64 = np.asarray(errors64, dtype=float)
    ax.loglog(hs, e64, "o-", ms=3, color=COLORS["bncourse"], label="loss in float64")
    if errors32 is not None:
        ax.loglog(hs, np.asarray(errors32, dtype=float), "s-", ms=3, color=COLORS["torch"],
                  label="loss in float32")
    k = int(np.argmin(e64))
    # Guides through the best float64 point: slope 2 (truncation) and slope -1 (round-off).
    ax.loglog(hs, e64[k] * (hs / hs[k]) ** 2, "--", color=COLORS["theory"], lw=1,
              label=r"$\propto h^2$ (truncation)")
    ax.loglog(hs, e64[k] * (hs[k] / hs), ":", color=COLORS["theory"], lw=1,
              label=r"$\propto 1/h$ (round-off)")
    ax.set_ylim(max(1e-13, 0.1 * e64.min()), 3.0)
    ax.set_xlabel("step $h$ of the central difference")
    ax.set_ylabel("relative error of $dx$ (max over entries)")
    ax.set_title(f"Central differences are most accurate near h = {hs[k]:.0e} (float64);\n"
                 "a smaller step is worse, not better")
    fig.legend(loc="outside lower center", ncols=4, fontsize=8)
    return fig


def plot_constants_error(sizes: Sequence[int], errors: dict[str, Sequence[float]]) -> Figure:
    """$\\lVert dx_{\\text{const}} - dx\\rVert / \\lVert dx\\rVert$ against the batch size $m$."""
    fig, ax = new_figure(width=6.8, height=3.8)
    m = np.asarray(sizes, dtype=float)
    styles = {"random": ("o-", COLORS["input"], r"random upstream $dy$"),
              "shift": ("s-", COLORS["torch"], r"$dy = 1 + 0.1\cdot$noise (a common shift)")}
    for name, values in errors.items():
        marker, colour, label = styles.get(name, ("^-", COLORS["theory"], name))
        ax.loglog(m, np.asarray(values, dtype=float), marker, ms=4, color=colour, label=label)
    if "random" in errors:
        r = np.asarray(errors["random"], dtype=float)
        ax.loglog(m, r[-1] * np.sqrt(m[-1] / m), "--", color=COLORS["theory"], lw=1,
                  label=r"$\propto 1/\sqrt{m}$")
    ax.set_xlabel("values per channel $m$")
    ax.set_ylabel(r"$\|dx_{const} - dx\| \,/\, \|dx\|$")
    ax.set_title("Statistics treated as constants: the error never vanishes,\n"
                 "and for a shared shift it is ten times the true gradient")
    ax.legend()
    return fig


def _shape_label(shape: Sequence[int]) -> str:
    return "×".join(str(d) for d in shape)


def plot_cost(bench: dict[str, Any], variants: Sequence[str] = ("bncourse", "staged",
                                                                  "compiled")) -> Figure:
    """Time of one training step relative to torch, and bytes saved for backward per element."""
    fig, (ax_t, ax_m) = new_figure(ncols=2, width=10.0, height=4.0)
    shapes = [tuple(s) for s in bench["shapes"]]
    rows = {(tuple(r["shape"]), r["variant"]): r for r in bench["rows"]}
    width = 0.8 / len(variants)
    pos = np.arange(len(shapes))
    for i, variant in enumerate(variants):
        ratios = [rows[(s, variant)]["ratio_to_torch"] if (s, variant) in rows else np.nan
                  for s in shapes]
        ax_t.bar(pos + (i - (len(variants) - 1) / 2) * width, ratios, width,
                 color=COLORS[variant], label=variant)
    ax_t.axhline(1.0, color=COLORS["torch"], lw=1.5, label="torch (native kernel)")
    ax_t.set_xticks(pos, [_shape_label(s) for s in shapes], fontsize=8)
    ax_t.set_xlabel("input shape")
    ax_t.set_ylabel("time of forward + backward / torch's")
    ax_t.set_title("Time: eager is several times slower;\ncompiled comes close to torch")
    ax_t.legend(fontsize=8)

    all_variants = ["torch", *variants]
    width = 0.8 / len(all_variants)
    for i, variant in enumerate(all_variants):
        per_element = [
            rows[(s, variant)]["saved_bytes"] / float(np.prod(s)) if (s, variant) in rows
            else np.nan for s in shapes
        ]
        ax_m.bar(pos + (i - (len(all_variants) - 1) / 2) * width, per_element, width,
                 color=COLORS[variant], label=variant)
    ax_m.set_xticks(pos, [_shape_label(s) for s in shapes], fontsize=8)
    ax_m.set_xlabel("input shape")
    ax_m.set_ylabel("bytes saved for backward per element")
    ax_m.set_title("Memory: the compact form saves one tensor,\nthe staged graph two")
    ax_m.legend(fontsize=8)
    machine = bench["machine"]
    fig.suptitle(f"One training step of BN in {bench['dtype']} on {machine['cpu']} "
                 f"({machine['threads']} threads, torch {machine['torch']})", fontsize=10)
    return fig
