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
* **A comparison carries its uncertainty.** Two measured things are compared through
  :func:`paired_difference` (seeds shared by both arms) or :func:`difference` (independent
  samples), as a mean with its standard error, its count and a confidence interval; timings
  through :func:`paired_ratio`, the median of per-repeat ratios with a distribution-free
  interval, or :func:`paired_median_difference` for differences in time. A sentence may call
  a difference real, or state an ordering, only when the interval excludes zero (one, for a
  ratio): :func:`assert_ordered` asserts exactly that, and :func:`assert_indistinguishable`
  asserts the opposite for a sentence that says "not distinguishable from zero".
* **Glued numbers are what the text shows.** :func:`glue` stores a float rounded (to six
  significant digits unless told otherwise), so the stored record does not change with the
  last bits of round-off, which differ between machines and thread counts.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "glue", "assert_close", "Estimate", "Ratio", "mean_se", "difference", "paired_difference",
    "paired_ratio", "MedianDifference", "paired_median_difference", "assert_ordered",
    "assert_indistinguishable", "round_significant",
]


def _plain(value: Any) -> Any:
    """A NumPy or torch scalar as a Python number, so that a format spec applies to it."""
    if hasattr(value, "item") and getattr(value, "shape", None) in ((), []):
        value = value.item()  # a 0-d array or tensor, or a NumPy scalar
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def round_significant(value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` significant digits (0, inf and nan are returned as is)."""
    if digits < 1:
        raise ValueError(f"round_significant: digits must be at least 1, got {digits}")
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits - 1}e}")


#: Significant digits a glued float keeps unless the cell says otherwise: more than any format
#: in the prose shows (``.4f`` of a number below 100), far fewer than round-off disturbs.
GLUE_DIGITS = 6


def glue(name: str, value: Any, *, digits: int = GLUE_DIGITS) -> None:
    """Store ``value`` under ``name`` for the prose (MyST-NB glue, not displayed).

    Numbers are stored as plain Python numbers, so ``{glue:text}`name:.3f``` can format
    them. A float is stored rounded to ``digits`` significant digits (six by default; pass
    fewer for a value that is itself noisy, such as a timing): the text shows fewer, and the
    stored record, which nbval compares, then does not depend on the machine, the BLAS kernel
    or the thread count. Keep ``digits`` at least two above the digits the text shows: with
    one more only, the text rounds a rounded value (0.70535 stored as 0.705 shows as 0.70,
    not 0.71); ``tests/test_portable_outputs.py`` finds such a pair. Returns None, so that a
    cell ending in ``glue(...)`` shows nothing. Without MyST-NB installed (a student's
    environment, with nothing to glue into) this does nothing.
    """
    value = _plain(value)
    if isinstance(value, float):
        value = round_significant(value, digits)
    try:
        from myst_nb import glue as _myst_glue
    except ImportError:
        return
    _myst_glue(name, value, display=False)


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


# --------------------------------------------------------------------------------------
# Comparisons with their uncertainty
# --------------------------------------------------------------------------------------


def _t_quantile(confidence: float, dof: int) -> float:
    """The two-sided Student-t quantile for ``confidence`` with ``dof`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def _sample(values: Any, what: str) -> np.ndarray:
    v = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values,
                   dtype=np.float64).ravel()
    if v.size < 2:
        raise ValueError(f"{what}: a mean with a standard error needs at least 2 values, "
                         f"got {v.size}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{what}: the values must be finite, got {v.tolist()}")
    return v


@dataclass(frozen=True)
class Estimate:
    """A mean with its standard error over ``n`` values and a ``confidence`` interval.

    ``str()`` gives what a sentence quotes: ``"1.52 ± 0.69 (n = 5)"``.
    """

    mean: float
    se: float
    n: int
    low: float
    high: float
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely on one side of zero."""
        return self.low > 0 or self.high < 0

    def format(self, spec: str = ".2g") -> str:
        return f"{self.mean:{spec}} ± {self.se:{spec}} (n = {self.n})"

    def __str__(self) -> str:
        return self.format()


def mean_se(values: Any, *, confidence: float = 0.95, what: str = "values") -> Estimate:
    """The mean of ``values`` with its standard error and a Student-t interval."""
    v = _sample(values, what)
    n = v.size
    mean = float(v.mean())
    se = float(v.std(ddof=1) / math.sqrt(n))
    half = _t_quantile(confidence, n - 1) * se
    return Estimate(mean, se, n, mean - half, mean + half, confidence)


def paired_difference(a: Any, b: Any, *, confidence: float = 0.95,
                      what: str = "paired difference") -> Estimate:
    """``a - b`` over pairs that share a seed (or a repeat): mean, standard error, interval.

    ``a[i]`` and ``b[i]`` must be measured on the same seed; pairing removes the part of
    the spread that the two arms share.
    """
    a, b = _paired_arms(a, b, what)
    return mean_se(a - b, confidence=confidence, what=what)


def difference(a: Any, b: Any, *, confidence: float = 0.95,
               what: str = "difference") -> Estimate:
    """``mean(a) - mean(b)`` for independent samples (Welch): estimate, error, interval."""
    a, b = _sample(a, what), _sample(b, what)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = float(math.sqrt(va + vb))
    mean = float(a.mean() - b.mean())
    if se == 0:
        return Estimate(mean, 0.0, a.size + b.size, mean, mean, confidence)
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = _t_quantile(confidence, max(1, int(math.floor(dof)))) * se
    return Estimate(mean, se, a.size + b.size, mean - half, mean + half, confidence)


@dataclass(frozen=True)
class _MedianInterval:
    """A median over ``n`` paired repeats with a distribution-free ``confidence`` interval.

    The interval is the pair of order statistics that brackets the median with at least
    ``confidence`` (the binomial argument: each value falls below the true median with
    probability 1/2), so it makes no assumption about the shape of the timings' noise; it
    does assume that the repetitions are independent.
    """

    median: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def format(self, spec: str = ".2g") -> str:
        return f"{self.median:{spec}} ({self.low:{spec}} to {self.high:{spec}}, n = {self.n})"

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True)
class Ratio(_MedianInterval):
    """The median of paired ratios (timings taken side by side) with its interval."""

    @property
    def excludes_one(self) -> bool:
        """True when the interval lies entirely above or below 1."""
        return self.low > 1 or self.high < 1

    def format(self, spec: str = ".2f") -> str:
        return super().format(spec)


@dataclass(frozen=True)
class MedianDifference(_MedianInterval):
    """The median of paired differences with its interval.

    For timings whose steps are paired (taken side by side) but whose noise has heavy tails,
    where a mean and its standard error would be dominated by a few slow steps.
    """

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or below 0."""
        return self.low > 0 or self.high < 0


def _median_interval(n: int, confidence: float) -> tuple[int, int] | None:
    """0-based ranks (j, n-1-j) of sorted values with P(x_(j) <= median <= x_(n-1-j)) >= confidence.

    x_(j) lies above the median when at most j of the n values do, which has probability
    P(Binomial(n, 1/2) <= j); the largest j that keeps this within (1 - confidence) / 2 gives
    the shortest such interval. None when n is too small for any.
    """
    from scipy import stats

    j = -1
    while stats.binom.cdf(j + 1, n, 0.5) <= (1 - confidence) / 2:
        j += 1
    return None if j < 0 else (j, n - 1 - j)


def _paired_median(kind: type[_MedianInterval], values: np.ndarray, confidence: float,
                   what: str) -> _MedianInterval:
    v = np.sort(values)
    ranks = _median_interval(v.size, confidence)
    if ranks is None:
        raise ValueError(f"{what}: an interval for the median at {confidence:.0%} needs more "
                         f"repeats than {v.size} (at least 6 at 95%)")
    j, k = ranks
    return kind(float(np.median(v)), float(v[j]), float(v[k]), v.size, confidence)


def _paired_arms(a: Any, b: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _sample(a, what), _sample(b, what)
    if a.shape != b.shape:
        raise ValueError(f"{what}: a paired comparison needs as many values in each arm, "
                         f"got {a.size} and {b.size}")
    return a, b


def paired_ratio(a: Any, b: Any, *, confidence: float = 0.95,
                 what: str = "paired ratio") -> Ratio:
    """Timings ``a[i] / b[i]`` of repeats taken side by side: median and its interval."""
    a, b = _paired_arms(a, b, what)
    if np.any(b <= 0) or np.any(a <= 0):
        raise ValueError(f"{what}: timings must be positive")
    return _paired_median(Ratio, a / b, confidence, what)


def paired_median_difference(a: Any, b: Any, *, confidence: float = 0.95,
                             what: str = "paired difference") -> MedianDifference:
    """``a[i] - b[i]`` over repeats taken side by side: the median and its interval."""
    a, b = _paired_arms(a, b, what)
    return _paired_median(MedianDifference, a - b, confidence, what)


def assert_ordered(estimate: Estimate | Ratio | MedianDifference, *, sign: int = 1,
                   what: str) -> None:
    """Assert that the interval excludes no-difference on the side ``sign`` says.

    For an :class:`Estimate`, ``sign=+1`` asserts the difference is above zero (the first
    arm is larger), ``sign=-1`` below; for a :class:`Ratio`, above or below one. The message
    names ``what`` and gives the estimate, so a failing chapter says which sentence is no
    longer true.
    """
    if sign not in (1, -1):
        raise ValueError(f"assert_ordered: sign must be +1 or -1, got {sign}")
    if isinstance(estimate, Ratio):
        low, high, null = estimate.low, estimate.high, 1.0
    else:
        low, high, null = estimate.low, estimate.high, 0.0
    ok = low > null if sign > 0 else high < null
    if not ok:
        side = "above" if sign > 0 else "below"
        raise AssertionError(
            f"{what}: the text says the difference is {side} {null:g}, but its "
            f"{estimate.confidence:.0%} interval is [{low:.3g}, {high:.3g}] ({estimate})"
        )


def assert_indistinguishable(estimate: Estimate | Ratio | MedianDifference, *,
                             what: str) -> None:
    """Assert that the interval contains no-difference (zero, or one for a ratio).

    The check behind a sentence that says a difference is not distinguishable from noise.
    """
    null = 1.0 if isinstance(estimate, Ratio) else 0.0
    if not (estimate.low <= null <= estimate.high):
        raise AssertionError(
            f"{what}: the text says the difference is within the noise, but its "
            f"{estimate.confidence:.0%} interval [{estimate.low:.3g}, {estimate.high:.3g}] "
            f"excludes {null:g} ({estimate})"
        )
