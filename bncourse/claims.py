"""Claims in the prose: glue a computed number into the text, assert a checked statement.

Two conventions of the book rest on this module.

* **Numbers in prose come from the outputs.** A cell that computes a number the text quotes
  calls :func:`glue` (``glue("formula-spread", spread)``) and the markdown shows it with
  MyST-NB's role, ``{glue:text}`formula-spread:.2g```. Outside the book build (a student
  notebook, a plain Python session) :func:`glue` stores nothing and shows nothing.
* **A labelled statement names its check.** A code cell whose metadata declares
  ``"ledger": {"verifies": [labels]}`` must assert something; :func:`assert_close` is the
  usual assertion: it compares two independently computed quantities and, when they
  disagree, says what disagreed and by how much.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["glue", "assert_close"]


def _plain(value: Any) -> Any:
    """A NumPy or torch scalar as a Python number, so that a format spec applies to it."""
    if hasattr(value, "item") and getattr(value, "shape", None) in ((), []):
        value = value.item()  # a 0-d array or tensor, or a NumPy scalar
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def glue(name: str, value: Any) -> None:
    """Store ``value`` under ``name`` for the prose (MyST-NB glue, not displayed).

    Numbers are stored as plain Python numbers, so ``{glue:text}`name:.3f``` can format
    them. Returns None, so that a cell ending in ``glue(...)`` shows nothing. Without MyST-NB
    installed (a student's environment, with nothing to glue into) this does nothing.
    """
    try:
        from myst_nb import glue as _myst_glue
    except ImportError:
        return
    _myst_glue(name, _plain(value), display=False)


def assert_close(
    got: Any, want: Any, *, rtol: float = 1e-12, atol: float = 0.0, what: str = "values"
) -> float:
    """Assert that ``got`` and ``want`` agree within ``rtol``/``atol``; return the largest gap.

    Raises ``AssertionError`` naming ``what`` and the largest absolute difference when any
    element disagrees (``|got - want| > atol + rtol * |want|``) or the shapes differ.
    """
    g = np.asarray(got.detach().cpu() if hasattr(got, "detach") else got, dtype=np.float64)
    w = np.asarray(want.detach().cpu() if hasattr(want, "detach") else want, dtype=np.float64)
    if g.shape != w.shape:
        raise AssertionError(f"{what}: shapes differ, {g.shape} against {w.shape}")
    gap = float(np.max(np.abs(g - w))) if g.size else 0.0
    if not np.all(np.abs(g - w) <= atol + rtol * np.abs(w)):
        raise AssertionError(
            f"{what} disagree: largest absolute difference {gap:.3g} "
            f"(allowed: atol={atol:g} + rtol={rtol:g} * |want|)"
        )
    return gap
