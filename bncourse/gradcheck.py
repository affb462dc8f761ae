"""Numerical gradients by central differences, and the relative error the course reports.

$\\partial f/\\partial x_k \\approx (f(x + h e_k) - f(x - h e_k)) / 2h$, error $O(h^2)$ from
truncation plus $O(\\varepsilon_{mach}/h)$ from round-off. In float64, ``h = 1e-5`` keeps
both near 1e-10.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["numerical_gradient", "rel_error", "check_gradient", "GradientMismatch"]


def rel_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-12) -> float:
    """$\\max_k |a_k - b_k| / \\max(|a_k| + |b_k|, \\text{floor})$: the worst relative error.

    Symmetric in ``a`` and ``b``; ``floor`` keeps entries that are both zero from dividing
    by zero. About 1e-8 or less means agreement in float64; 1e-2 or more means a bug.
    """
    if not floor > 0.0 or not np.isfinite(floor):
        raise ValueError(
            f"floor must be a positive, finite number (it keeps entries that are both zero "
            f"from dividing by zero); got {floor}"
        )
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), floor)))


def numerical_gradient(
    f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-5
) -> np.ndarray:
    """Central-difference gradient of a scalar function ``f`` at ``x`` (``x`` is not changed).

    Costs ``2 * x.size`` calls of ``f``; meant for the small arrays of tests and exercises.
    """
    if not h > 0.0 or not np.isfinite(h):
        raise ValueError(f"the step h must be a positive, finite number; got {h}")
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat_x = x.reshape(-1)
    flat_g = grad.reshape(-1)
    for k in range(flat_x.size):
        saved = flat_x[k]
        flat_x[k] = saved + h
        f_plus = float(f(x))
        flat_x[k] = saved - h
        f_minus = float(f(x))
        flat_x[k] = saved
        flat_g[k] = (f_plus - f_minus) / (2.0 * h)
    return grad


class GradientMismatch(AssertionError):
    """An analytic gradient that disagrees with central differences."""


def check_gradient(
    f: Callable[[np.ndarray], float],
    analytic: np.ndarray,
    x: np.ndarray,
    h: float = 1e-5,
    tol: float = 1e-6,
    name: str = "gradient",
    floor: float = 1e-12,
) -> float:
    """Compare ``analytic`` with the central-difference gradient of ``f`` at ``x``.

    Returns the relative error (:func:`rel_error` with ``floor``); raises
    :class:`GradientMismatch` naming the worst entry, both values and the error when it
    exceeds ``tol``. Entries far smaller than the round-off of the differences,
    about ``machine eps * |f| / h``, cannot be checked relatively: raise ``floor`` to that
    scale divided by ``tol`` when the gradient has (near-)zero entries.
    """
    numeric = numerical_gradient(f, x, h)
    analytic = np.asarray(analytic, dtype=np.float64)
    err = rel_error(analytic, numeric, floor=floor)
    if not err <= tol:
        diff = np.abs(analytic - numeric)
        k = np.unravel_index(int(np.argmax(diff)), diff.shape)
        raise GradientMismatch(
            f"{name} disagrees with central differences (h={h}): relative error {err:.3e} > "
            f"{tol:.0e}; worst entry {tuple(int(i) for i in k)}: analytic {analytic[k]:.10g}, "
            f"numerical {numeric[k]:.10g}"
        )
    return err
