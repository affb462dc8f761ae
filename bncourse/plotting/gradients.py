"""Figures of the gradients chapter: forward graph, finite differences, a wrong gradient, cost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from . import COLORS, new_figure

__all__ = ["plot_forward_graph", "forward_graph_paths", "plot_fd_sweep", "plot_constants_error",
           "plot_cost"]

# Node name -> (x, y, label, colour key) of the forward graph. The batch statistics are drawn
# in the colour of training mode (batch statistics) used in every chapter.
_NODES: dict[str, tuple[float, float, str, str]] = {
    "x": (0.0, 1.0, r"$x$", "input"),
    "mu": (1.2, 2.3, r"$\mu_B = \frac{1}{m}\sum_i x_i$", "train"),
    "c": (2.4, 1.0, r"$c = x - \mu_B$", "input"),
    "v": (3.9, 2.3, r"$\sigma_B^2 = \frac{1}{m}\sum_i c_i^2$", "train"),
    "s": (6.3, 2.3, r"$s = (\sigma_B^2 + \epsilon)^{-1/2}$", "train"),
    "xhat": (5.0, 1.0, r"$\hat{x} = c\,s$", "normalized"),
    "gamma": (8.6, 2.3, r"$\gamma,\ \beta$", "theory"),
    "y": (7.4, 1.0, r"$y = \gamma\hat{x} + \beta$", "normalized"),
    "L": (9.3, 1.0, r"$L$", "theory"),
}
_EDGES: tuple[tuple[str, str], ...] = (
    ("x", "mu"), ("x", "c"), ("mu", "c"), ("c", "v"), ("v", "s"), ("c", "xhat"),
    ("s", "xhat"), ("xhat", "y"), ("gamma", "y"), ("y", "L"),
)


def forward_graph_paths(start: str = "x", end: str = "xhat") -> list[tuple[str, ...]]:
    """Every directed path from ``start`` to ``end`` along the edges :func:`plot_forward_graph`
    draws, as tuples of node names (``"x"``, ``"mu"``, ``"c"``, ``"v"``, ``"s"``, ``"xhat"``,
    ...), in a fixed order."""
    if start not in _NODES or end not in _NODES:
        raise ValueError(f"nodes are {sorted(_NODES)}; got {start!r} and {end!r}")
    paths: list[tuple[str, ...]] = []

    def walk(path: tuple[str, ...]) -> None:
        if path[-1] == end:
            paths.append(path)
            return
        for a, b in _EDGES:
            if a == path[-1] and b not in path:
                walk((*path, b))

    walk((start,))
    return sorted(paths, key=lambda p: (len(p), p))


def plot_forward_graph() -> Figure:
    """The training-mode forward pass as a graph: the nodes backpropagation visits in reverse."""
    fig, ax = new_figure(width=7.0, height=3.3)
    ax.set_axis_off()
    ax.grid(False)
    boxes = {}
    for name, (x, y, label, colour) in _NODES.items():
        boxes[name] = ax.text(
            x, y, label, ha="center", va="center", fontsize=11,
            bbox={"boxstyle": "round,pad=0.3", "facecolor": "white",
                  "edgecolor": COLORS[colour], "linewidth": 2.0},
        )
    for a, b in _EDGES:
        ax.annotate(
            "", xy=(0.5, 0.5), xycoords=boxes[b], xytext=(0.5, 0.5), textcoords=boxes[a],
            arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 1.2,
                        "patchA": boxes[a].get_bbox_patch(),
                        "patchB": boxes[b].get_bbox_patch(), "shrinkA": 2, "shrinkB": 2},
        )
    ax.text(4.65, 3.0, "top: per-channel vectors (batch statistics, parameters)", ha="center",
            fontsize=10, color="#444444")
    ax.text(4.65, 0.3, "bottom: tensors the size of the input", ha="center", fontsize=10,
            color="#444444")
    ax.set_xlim(-0.4, 9.7)
    ax.set_ylim(0.1, 3.2)
    ax.set_title("The forward graph: four paths lead from $x$ to $\\hat{x}$; the one through\n"
                 "$\\mu_B$ and then $\\sigma_B^2$ carries no gradient")
    return fig


def plot_fd_sweep(hs: Sequence[float], errors64: Sequence[float],
                  errors32: Sequence[float] | None = None,
                  x_rounds_below: float | None = None) -> Figure:
    """Central-difference error vs $h$: $O(h^2)$ truncation, $O(\\varepsilon/h)$ round-off.

    ``x_rounds_below``, when given, marks the step below which $x_k \\pm h$ rounds to $x_k$
    in float32 for the largest entry $x_k$ (half the float32 spacing at the largest $|x|$);
    smaller entries have a finer spacing, so theirs happens further left.
    """
    fig, ax = new_figure(width=7.0, height=4.6)
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
    if x_rounds_below is not None:
        ax.axvline(x_rounds_below, color=COLORS["input"], lw=1, ls="-.",
                   label="float32: left of this line, $x_k \\pm h$ rounds to $x_k$\n"
                  "for the largest entry $x_k$ of $x$")
    ax.set_ylim(max(1e-13, 0.1 * e64.min()), 3.0)
    ax.set_xlabel("step $h$ of the central difference")
    ax.set_ylabel("relative error of $dx$\n(max over entries)")
    ax.set_title(f"Central differences are most accurate near h = {hs[k]:.0e} (float64);\n"
                 "a smaller step is worse, not better")
    fig.legend(loc="outside lower center", ncols=2)
    return fig


def plot_constants_error(
    sizes: Sequence[int], errors: dict[str, Sequence[float]],
    amplitudes: Sequence[float] | None = None, amplitude_errors: Sequence[float] | None = None,
    shift_noise: float = 0.1,
) -> Figure:
    """$\\lVert dx_{\\text{const}} - dx\\rVert / \\lVert dx\\rVert$ against $m$ and the noise.

    Top: against the batch size $m$, for random $dy$ and for $dy = 1 + a\\,$noise with
    $a$ = ``shift_noise``. Bottom (when ``amplitudes`` is given): against the noise
    amplitude $a$ of the shared shift, with the line $1/a$.
    """
    two = amplitudes is not None and amplitude_errors is not None
    fig, axes = new_figure(nrows=2 if two else 1, width=7.0, height=7.2 if two else 4.0)
    ax = axes[0] if two else axes
    m = np.asarray(sizes, dtype=float)
    styles = {"random": ("o-", COLORS["input"], r"random upstream $dy$"),
              "shift": ("s-", COLORS["torch"],
                        rf"$dy = 1 + {shift_noise:g}\cdot$noise (a shared shift)")}
    for name, values in errors.items():
        marker, colour, label = styles.get(name, ("^-", COLORS["theory"], name))
        ax.loglog(m, np.asarray(values, dtype=float), marker, ms=4, color=colour, label=label)
    if "random" in errors:
        r = np.asarray(errors["random"], dtype=float)
        ax.loglog(m, r[-1] * np.sqrt(m[-1] / m), "--", color=COLORS["theory"], lw=1,
                  label=r"$\propto 1/\sqrt{m}$")
    ax.set_xlabel("values per channel $m$")
    ax.set_ylabel(r"$\|dx_{const} - dx\| \,/\, \|dx\|$")
    ax.set_title("Statistics treated as constants: for random $dy$ the error\n"
                 "shrinks like $1/\\sqrt{m}$; for a shared shift it does not shrink")
    ax.legend(loc="center right")
    if two:
        ax = axes[1]
        a = np.asarray(amplitudes, dtype=float)
        ax.loglog(a, np.asarray(amplitude_errors, dtype=float), "s-", ms=4,
                  color=COLORS["torch"], label=r"$dy = 1 + a\cdot$noise")
        ax.loglog(a, 1.0 / a, "--", color=COLORS["theory"], lw=1, label=r"$1/a$")
        ax.set_xlabel("noise amplitude $a$ of the upstream gradient")
        ax.set_ylabel(r"$\|dx_{const} - dx\| \,/\, \|dx\|$")
        ax.set_title(f"For a shared shift the error is about $1/a$ (m = {int(m[-1])}):\n"
                     "set by the noise amplitude of $dy$, not by BN")
        ax.legend(loc="upper right")
    return fig


def _shape_label(shape: Sequence[int]) -> str:
    return "×".join(str(d) for d in shape)


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.1f}" if min(values) == max(values) else (
        f"{min(values):.1f}-{max(values):.1f}")


def plot_cost(bench: dict[str, Any], variants: Sequence[str] = ("bncourse", "staged",
                                                                  "compiled")) -> Figure:
    """Time of one training step relative to torch (torch's own time under each shape), and
    bytes saved for backward per element: two rows, legends outside the panels.

    The bars of the top row are the medians of the paired ratios; the error bars their
    intervals (``ratio_low`` to ``ratio_high`` in the table).
    """
    fig, (ax_t, ax_m) = new_figure(nrows=2, width=7.0, height=7.6)
    shapes = [tuple(s) for s in bench["shapes"]]
    rows = {(tuple(r["shape"]), r["variant"]): r for r in bench["rows"]}
    all_variants = ["torch", *variants]
    width = 0.8 / len(all_variants)
    pos = np.arange(len(shapes))
    spans = {}
    for i, variant in enumerate(all_variants):
        ratios = np.array([rows[(s, variant)]["ratio_to_torch"] if (s, variant) in rows
                           else np.nan for s in shapes])
        low = np.array([rows[(s, variant)].get("ratio_low", np.nan) if (s, variant) in rows
                        else np.nan for s in shapes])
        high = np.array([rows[(s, variant)].get("ratio_high", np.nan) if (s, variant) in rows
                         else np.nan for s in shapes])
        spans[variant] = [r for r in ratios if np.isfinite(r)]
        at = pos + (i - (len(all_variants) - 1) / 2) * width
        ax_t.bar(at, ratios, width, color=COLORS[variant], label=variant)
        if variant != "torch" and np.any(np.isfinite(low)):
            ax_t.errorbar(at, ratios, yerr=np.vstack([ratios - low, high - ratios]), fmt="none",
                          ecolor="#333333", elinewidth=1.0, capsize=2)
    ticks = [
        f"{_shape_label(s)}\ntorch {rows[(s, 'torch')]['median_ms']:.2g} ms"
        if (s, "torch") in rows else _shape_label(s) for s in shapes
    ]
    ax_t.set_xticks(pos, ticks)
    ax_t.set_xlabel("input shape, and torch's time for one step")
    ax_t.set_ylabel("time of forward + backward\n/ torch's (median, 95% interval)")
    parts = [f"{v} {_span(spans[v])}x" for v in variants if spans.get(v)]
    ax_t.set_title("Time relative to torch's layer: " + ", ".join(parts[:2]) + ",\n"
                   + ", ".join(parts[2:]) + " (range over the shapes)")

    for i, variant in enumerate(all_variants):
        per_element = [
            rows[(s, variant)]["saved_bytes"] / float(np.prod(s)) if (s, variant) in rows
            else np.nan for s in shapes
        ]
        ax_m.bar(pos + (i - (len(all_variants) - 1) / 2) * width, per_element, width,
                 color=COLORS[variant])
    ax_m.set_xticks(pos, [_shape_label(s) for s in shapes])
    ax_m.set_xlabel("input shape")
    ax_m.set_ylabel("bytes saved for backward\nper element")
    ax_m.set_title("Memory: the compact form saves one tensor, the staged graph two")
    machine = bench["machine"]
    threads = int(machine["threads"])
    fig.legend(*ax_t.get_legend_handles_labels(), loc="outside lower center",
               ncols=len(all_variants))
    fig.suptitle(f"One training step of BN in {bench['dtype']} on {machine['cpu']} "
                 f"({threads} thread{'s' if threads != 1 else ''}, torch {machine['torch']})")
    return fig
