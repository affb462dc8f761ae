"""The exercise checker: kinds of exercise, the verdict, and the catalogue of mistakes.

Three kinds:

* :class:`FunctionExercise`: the answer is a callable. It runs on seeded cases against the
  reference; a failure is matched against the catalogue of known wrong implementations.
* :class:`NumberExercise`: the answer is a real number (int, float, Decimal, Fraction, NumPy
  scalar, 0-d array or tensor), compared within a tolerance; known wrong values (and near
  misses, with their own tolerance) carry their own message.
* :class:`ChoiceExercise`: the answer is an option letter, in any case, written bare or as
  the notebooks print the options: ``"b"``, ``"(b)"``, ``"b)"``, ``"b."``, ``"b:"``.

Whatever the reader passes, :meth:`Exercise.check` returns a :class:`CheckResult`; only
``KeyboardInterrupt`` goes through. It never shows the reference's values.

How a function answer is run, so that no answer can fool the checker:

* the expected outputs (the reference's, and every catalogued mistake's) are computed
  before the answer runs, on copies of the inputs;
* the answer gets its own deep copies of the inputs, and a time limit
  (``FunctionExercise.time_limit`` seconds for all its cases together);
* after every call, whatever the answer replaced in the modules the checker relies on
  (builtins, math, NumPy, bncourse) is put back, and the exercise's own settings too;
* outputs are compared as plain ``ndarray`` copies (an ndarray subclass or a masked array
  is judged by its data) with the checker's own ufuncs, saved when this module is imported.
"""

from __future__ import annotations

import copy
import decimal
import html
import math
import numbers
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CheckResult",
    "Case",
    "Mistake",
    "Exercise",
    "FunctionExercise",
    "NumberExercise",
    "ChoiceExercise",
    "Progress",
    "choice_letter",
    "page_answer",
    "read_number",
    "distinct_digits",
    "NumberTextError",
    "page_data",
    "MESSAGES",
    "PASSED",
    "FAILED",
    "NOT_ATTEMPTED",
]

PASSED = "passed"
FAILED = "failed"
NOT_ATTEMPTED = "not attempted"

_MARKS = {PASSED: "✔", FAILED: "✘", NOT_ATTEMPTED: "…"}
# The verdict's colour comes from the page's theme when there is one (pydata-sphinx-theme on
# the site, JupyterLab in a notebook), with a fallback; it marks only the border and the sign.
# The text keeps the theme's own colour and the background is a light tint of the verdict's
# colour over the page's, so the box reads the same in light and in dark mode.
_THEME_COLOURS = {
    PASSED: "var(--pst-color-success, var(--jp-success-color1, #1b7a3a))",
    FAILED: "var(--pst-color-danger, var(--jp-error-color1, #b3261e))",
    NOT_ATTEMPTED: "var(--pst-color-muted, var(--jp-ui-font-color2, #6b6b6b))",
}
_TINTS = {PASSED: "rgba(46, 160, 67, 0.12)", FAILED: "rgba(218, 54, 51, 0.12)",
          NOT_ATTEMPTED: "rgba(128, 128, 128, 0.12)"}

# The checker's own tools, saved before any answer can replace them.
_array = np.array
_ndarray = np.ndarray
_subtract = np.subtract
_absolute = np.absolute
_maximum = np.maximum
_less_equal = np.less_equal
_isfinite = np.isfinite
_isnan = np.isnan
_float64 = np.float64
_float32 = np.float32
_floating = np.floating
_number = np.number
_issubdtype = np.issubdtype
_deepcopy = copy.deepcopy
_isinstance = isinstance
_perf_counter = time.perf_counter
F32_EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one answer: ``passed``, the ``message`` and a ``status``.

    ``status`` is ``"passed"``, ``"failed"`` or ``"not attempted"``. ``mistake`` names the
    catalogued mistake the answer matched, when one did. Shows itself as a box in a notebook
    (coloured by the theme, readable in light and dark mode) and as one line of text elsewhere.
    """

    exercise_id: str
    status: str
    message: str
    mistake: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __bool__(self) -> bool:
        return self.passed

    def _title(self) -> str:
        return {PASSED: "Correct", FAILED: "Not yet", NOT_ATTEMPTED: "Not attempted"}[self.status]

    def __str__(self) -> str:
        return f"{_MARKS[self.status]} {self.exercise_id}: {self._title()}. {self.message}"

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        colour = _THEME_COLOURS[self.status]
        return (
            f'<div class="bncourse-check bncourse-{self.status.replace(" ", "-")}" '
            f'style="border-left: 4px solid {colour}; background: {_TINTS[self.status]}; '
            f'color: inherit; padding: 0.4em 0.8em; margin: 0.3em 0;">'
            f'<strong><span style="color: {colour};">{_MARKS[self.status]}</span> '
            f"{self._title()}</strong> "
            f"<code>{html.escape(self.exercise_id)}</code><br>{html.escape(self.message)}</div>"
        )


@dataclass(frozen=True)
class Case:
    """One input on which a function answer is run: ``args`` and a label a reader can read."""

    label: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Mistake:
    """A known wrong answer and what to tell the reader who made it.

    ``answer`` is a wrong implementation (function exercises), a wrong value (number
    exercises) or a wrong option letter (choice exercises). ``name`` is a short id used by
    the tests; ``message`` names the concept the reader missed. For a number exercise,
    ``rtol``/``atol`` (when given) replace the exercise's tolerance for this value: a "near
    miss" such as a hand computation with the wrong eps can be recognised within a wider or
    narrower band than the right value.
    """

    name: str
    message: str
    answer: Any
    rtol: float | None = None
    atol: float | None = None


class _ReaderError(Exception):
    """The reader's answer could not be judged (or needs a word); the message says why."""

    def __init__(self, message: str, status: str = FAILED) -> None:
        super().__init__(message)
        self.status = status


def _exception_text(e: BaseException) -> str:
    """``Type: message`` of an exception, even when its ``__str__`` raises."""
    name = type(e).__name__
    try:
        text = str(e)
    except BaseException:  # an answer's exception whose __str__ itself fails
        return f"{name} (whose message could not be printed)"
    return f"{name}: {text}" if text else name


#: The messages of number and choice exercises, shared with the web page's checker (which
#: fills the same ``{fields}``), so that both say the same thing.
MESSAGES = {
    "passed": "Your answer matches the reference.",
    "number_stub": "no number given yet",
    "not_a_number": "{text} is not a number; write a number such as 0.5, -2, 1e-3 or 1/4",
    "zero_denominator": "{text} divides by zero: the denominator of a fraction must not be 0",
    "ambiguous_comma": (
        "{text} is ambiguous: {thousands} (if the comma separates thousands) or {decimal} (if "
        "it is a decimal comma); write it without the comma, or with a decimal point"
    ),
    "quoted_number": "got the text {text}; write the number without quotes",
    "not_finite": "got {x}; expected a finite number",
    "roundoff": "{x3} is right: that is round-off; the exact value is 0.",
    "wrong_number": "{x} is not the expected value. {nudge}",
    "choice_stub": "no option chosen yet",
    "not_an_option": "{text} is not an option; choose one of {valid}",
    "wrong_option": "option '{letter}' is not right. {nudge}",
}

#: The latest verdict of every exercise checked in this session, by id.
_LATEST: dict[str, CheckResult] = {}


@dataclass
class Exercise:
    """An exercise: its ``id``, ``chapter`` number, ``title``, ``kind`` and catalogue.

    ``hints`` are progressive: ``hint(id)`` gives the first, ``hint(id, 2)`` the next, and
    the last stops short of the answer. A single ``hint`` counts as the only one.
    """

    id: str
    chapter: int
    title: str
    mistakes: Sequence[Mistake] = field(default_factory=tuple)
    hint: str = ""
    hints: Sequence[str] = ()
    kind: str = field(init=False, default="")

    @property
    def all_hints(self) -> tuple[str, ...]:
        """The progressive hints, first to last; ``hint`` alone counts as the only one."""
        hints = tuple(h for h in self.hints if h)
        if hints:
            return hints
        return (self.hint,) if self.hint else ()

    @property
    def first_hint(self) -> str:
        hints = self.all_hints
        return hints[0] if hints else ""

    def hint_text(self, n: int = 1) -> str:
        """The ``n``-th hint (from 1); past the last one, says that there are no more."""
        hints = self.all_hints
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"hint number must be a whole number from 1 up; got {n!r}")
        if not hints:
            return "Re-read the section of the chapter that introduces this idea."
        if n > len(hints):
            return (
                f"There are no more hints for {self.id}: it has {len(hints)} "
                f"hint{'s' if len(hints) != 1 else ''}, and the last one is as far as "
                "they go. The solution below the exercise shows the rest."
            )
        more = (
            f' (hint {n} of {len(hints)}; hint("{self.id}", {n + 1}) gives the next)'
            if n < len(hints) else (f" (hint {n} of {len(hints)}, the last)" if n > 1 else "")
        )
        return hints[n - 1] + more

    def check(self, answer: Any) -> CheckResult:
        """Judge ``answer``; never raises (only ``KeyboardInterrupt`` goes through)."""
        result = self._check(answer)
        _LATEST[self.id] = result
        return result

    def _check(self, answer: Any) -> CheckResult:
        try:
            mistake = self._judge(answer)
        except _ReaderError as e:
            return CheckResult(self.id, e.status, str(e))
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # a failure in the checker must still not reach the reader
            return CheckResult(
                self.id, FAILED,
                f"the checker could not judge this answer ({_exception_text(e)})",
            )
        if mistake is None:
            return CheckResult(self.id, PASSED, self._pass_message())
        if isinstance(mistake, Mistake):
            return CheckResult(self.id, FAILED, mistake.message, mistake=mistake.name)
        return CheckResult(self.id, FAILED, str(mistake))

    def _pass_message(self) -> str:
        return MESSAGES["passed"]

    def page_data(self) -> dict[str, Any]:
        """What the web page needs to check this exercise the way :meth:`check` does."""
        return {"id": self.id, "kind": self.kind, "chapter": self.chapter, "title": self.title,
                "hints": list(self.all_hints), "nudge": self._nudge()}

    #: What a generic failure suggests when the exercise has no hint.
    _default_nudge = "Work it out again from the chapter."

    def _nudge(self) -> str:
        """The generic failure's advice: the first hint, and where the next ones are."""
        hints = self.all_hints
        if not hints:
            return self._default_nudge
        text = hints[0].rstrip()
        if not text.endswith((".", "?", "!")):
            text += "."
        if len(hints) > 1:
            text += f' More hints: hint("{self.id}", 2).'
        return text

    def _judge(self, answer: Any) -> Mistake | str | None:
        raise NotImplementedError


# Type names said with a vowel sound although they start with a consonant letter.
_AN = {"ndarray", "nan", "MaskedArray"}


def _a(type_name: str) -> str:
    """'a list', 'an int', 'an ndarray': the type name with its article."""
    vowel = type_name[:1].lower() in "aeiou" or type_name in _AN
    return f"{'an' if vowel else 'a'} {type_name}"


def _is_stub(value: Any) -> bool:
    return value is None or value is Ellipsis


def _quoted(text: str) -> str:
    """A reader's text in quotes, cut at 40 characters (the page writes it the same way)."""
    text = text.strip()
    return f"'{text[:40]}...'" if len(text) > 40 else f"'{text}'"


# --------------------------------------------------------------------------------------
# Running a reader's function safely
# --------------------------------------------------------------------------------------


class _TimeLimit(BaseException):
    """Raised inside an answer that has run past its time limit (not an Exception, so an
    answer's ``except Exception`` cannot swallow it)."""


def _guarded_modules() -> list[Any]:
    """The modules whose attributes the checker relies on, in this process."""
    names = ["builtins", "math", "copy", "numbers", "decimal", "time", "signal", "threading",
             "numpy", "numpy.linalg", "numpy.random", "numpy._core.numeric",
             "numpy._core.fromnumeric", "numpy._core._methods", "numpy.lib._function_base_impl"]
    mods = [sys.modules[n] for n in names if n in sys.modules]
    mods += [m for n, m in list(sys.modules.items())
             if n == "bncourse" or n.startswith("bncourse.")]
    return [m for m in mods if m is not None and hasattr(m, "__dict__")]


class _Restore:
    """Snapshots the attributes of the guarded modules (and some objects) and puts back,
    on exit, anything an answer replaced or deleted."""

    def __init__(self, *objects: Any) -> None:
        self._dicts = [vars(m) for m in _guarded_modules()] + [vars(o) for o in objects]
        self._saved = [dict(d) for d in self._dicts]

    def __enter__(self) -> _Restore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> list[str]:
        """Put everything back; returns the names that had been changed."""
        changed = []
        for d, saved in zip(self._dicts, self._saved, strict=True):
            for key, value in saved.items():
                if key not in d or d[key] is not value:
                    try:
                        d[key] = value
                    except TypeError:  # a read-only mapping (mappingproxy): nothing to undo
                        continue
                    changed.append(key)
        return changed


_MISSING = object()


def _call_with_time_limit(fn: Callable[..., Any], args: tuple, limit: float) -> Any:
    """``fn(*args)``, interrupted after ``limit`` seconds with :class:`_TimeLimit`.

    In the main thread (a notebook, a script, pytest) a timer signal interrupts the answer
    itself; elsewhere the answer runs in a helper thread that is abandoned when it overruns.
    """
    if limit <= 0:
        raise _TimeLimit
    main = threading.current_thread() is threading.main_thread()
    if main and hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM"):
        armed = [True]

        def on_alarm(signum: int, frame: Any) -> None:
            if armed[0]:
                raise _TimeLimit

        previous = signal.signal(signal.SIGALRM, on_alarm)
        try:
            # Fires again every 0.2 s, in case the answer swallows the first interruption.
            signal.setitimer(signal.ITIMER_REAL, limit, 0.2)
            try:
                return fn(*args)
            finally:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = fn(*args)
        except BaseException as e:  # handed to the caller's thread below
            box["error"] = e

    worker = threading.Thread(target=target, daemon=True, name="bncourse-answer")
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        raise _TimeLimit
    if "error" in box:
        raise box["error"]
    return box["out"]


# --------------------------------------------------------------------------------------
# Function exercises
# --------------------------------------------------------------------------------------


def _plain(value: Any) -> np.ndarray:
    """A plain float ``ndarray`` copy of an array (a subclass or masked array by its data)."""
    return _array(value, copy=True, subok=False)


def _to_array(value: Any, what: str) -> np.ndarray:
    if _isinstance(value, _ndarray):
        return _plain(value)
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        raise _ReaderError(
            f"{what} is a torch.Tensor; this exercise works in NumPy, so return a NumPy array "
            f"(for example t.detach().numpy())"
        )
    raise _ReaderError(f"{what} is {_a(type(value).__name__)}; expected a NumPy array")


def _describe(value: Any) -> str:
    """A short description of an argument: arrays by their shape, never their values."""
    if isinstance(value, np.ndarray):
        dtype = "" if value.dtype == np.float64 else f", {value.dtype}"
        return f"array{value.shape}" if not dtype else f"array{value.shape}{dtype}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_describe(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    text = repr(value)
    return text if len(text) <= 40 else f"{type(value).__name__}(...)"


def _describe_args(args: tuple[Any, ...]) -> str:
    return ", ".join(_describe(a) for a in args)


def _own_code(answer: Any) -> str | None:
    """``bncourse.x.y`` when ``answer`` is a function (or callable) defined in bncourse."""
    fn = answer
    for _ in range(10):  # see through functools.partial, bound methods and wrappers
        inner = getattr(fn, "func", None) or getattr(fn, "__func__", None) or getattr(
            fn, "__wrapped__", None)
        if inner is None or inner is fn:
            break
        fn = inner
    module = getattr(fn, "__module__", None)
    if not isinstance(module, str):
        module = type(fn).__module__
    if module != "bncourse" and not module.startswith("bncourse."):
        return None
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if isinstance(name, str) else module


def _is_float32_case(args: tuple[Any, ...]) -> bool:
    return any(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in args)


def _upcast(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32
                 else a for a in args)


def _downcast(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == np.float64
                 else a for a in args)


@dataclass
class _Expected:
    """What one case must give: the values (float64), the dtypes and the tolerance."""

    values: tuple[np.ndarray, ...]
    dtypes: tuple[np.dtype, ...]
    rtol: float
    atol: tuple[float, ...]
    float32: bool


def _within(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> bool:
    """``|got - want| <= atol + rtol |want|`` everywhere, on plain arrays, with saved ufuncs."""
    if got.shape != want.shape:
        return False
    g = _array(got, dtype=_float64, copy=True, subok=False)
    w = _array(want, dtype=_float64, copy=True, subok=False)
    if g.size == 0:
        return True
    diff = _absolute(_subtract(g, w))
    bound = atol + rtol * _absolute(w)
    same_nan = _isnan(g) & _isnan(w)
    ok = _less_equal(diff, bound) | same_nan | ((g == w) & ~_isfinite(w))
    return bool(ok.all())


def _largest_difference(got: np.ndarray, want: np.ndarray) -> float:
    g = _array(got, dtype=_float64, copy=True, subok=False)
    w = _array(want, dtype=_float64, copy=True, subok=False)
    return float(_absolute(_subtract(g, w)).max()) if g.size else 0.0


@dataclass
class _Outcome:
    """What a reader's function did on one case."""

    kind: str  # "ok", "error", "not implemented", "none", "ellipsis", "exit"
    outputs: tuple[np.ndarray, ...] = ()
    error: BaseException | None = None
    raw: Any = None


@dataclass
class FunctionExercise(Exercise):
    """The answer is a function; ``reference`` is the correct one.

    ``cases()`` returns the seeded :class:`Case` list; ``rule`` (set from
    :data:`bncourse.exercises._cases.RULES`) adds the cases of the written case rule. Outputs
    are a NumPy array or a tuple of arrays (``n_outputs``), compared with ``rtol``/``atol``
    (float32 cases: against the float64 reference, with float32 tolerances). Each catalogued
    mistake is a function; an answer that fails is named by the first mistake it agrees with
    on every case. ``time_limit`` is the time, in seconds, the answer gets for all its cases.
    """

    reference: Callable[..., Any] | None = None
    cases: Callable[[], list[Case]] | None = None
    signature: str = ""
    n_outputs: int = 1
    output_names: Sequence[str] = ("output",)
    rtol: float = 1e-7
    atol: float = 1e-9
    time_limit: float = 20.0
    rule: Any = None

    #: Tolerances of the float32 cases: a float32 answer against the float64 reference.
    float32_rtol = 2e-4
    float32_atol = 2e-5

    _default_nudge = "Compare your code with the formulas of the chapter step by step."

    def __post_init__(self) -> None:
        self.kind = "function"
        if self.reference is None or self.cases is None:
            raise TypeError(f"exercise {self.id}: a function exercise needs reference and cases")

    def page_data(self) -> dict[str, Any]:
        return {**super().page_data(), "signature": self.signature}

    def all_cases(self) -> list[Case]:
        """The seeded cases, then those the case rule adds."""
        cases = list(self.cases())
        if self.rule is not None:
            cases += self.rule.cases()
        return cases

    # The checker's own runs (reference and mistakes) --------------------------------------

    def _outputs_of(self, out: Any) -> tuple[np.ndarray, ...]:
        items = (out,) if self.n_outputs == 1 else tuple(out)
        return tuple(_plain(np.asarray(item)) for item in items)

    def _expected(self, case: Case) -> _Expected:
        native = self._outputs_of(self.reference(*_deepcopy(case.args)))
        dtypes = tuple(o.dtype for o in native)
        if _is_float32_case(case.args):
            values = self._outputs_of(self.reference(*_upcast(_deepcopy(case.args))))
            atol = tuple(self.float32_atol * max(1.0, float(np.max(np.abs(v)))) if v.size
                         else self.float32_atol for v in values)
            return _Expected(values, dtypes, self.float32_rtol, atol, True)
        return _Expected(native, dtypes, self.rtol, (self.atol,) * len(native), False)

    def _mistake_outputs(self, mistake: Mistake, case: Case) -> tuple[np.ndarray, ...] | None:
        try:
            return self._outputs_of(mistake.answer(*_deepcopy(case.args)))
        except Exception:
            return None

    # Running the reader's function on one case -------------------------------------------

    def _run_reader(self, fn: Callable[..., Any], case: Case, deadline: float) -> _Outcome:
        args = _deepcopy(case.args)
        originals = _deepcopy(case.args)
        guard = _Restore(self)
        try:
            out = _call_with_time_limit(fn, args, deadline - _perf_counter())
        except _TimeLimit:
            guard.restore()
            raise _ReaderError(
                f"your function did not finish within the time limit of {self.time_limit:g} s "
                f"(on the case: {case.label}): look for a loop that never ends, or a Python "
                f"loop over every value where a NumPy expression would do"
            ) from None
        except NotImplementedError as e:
            guard.restore()
            return _Outcome("not implemented", error=e)
        except SystemExit as e:
            guard.restore()
            return _Outcome("exit", error=e)
        except KeyboardInterrupt:
            guard.restore()
            raise
        except BaseException as e:
            guard.restore()
            return _Outcome("error", error=e)
        guard.restore()  # whatever the answer replaced in NumPy or the checker goes back
        for i, (before, after) in enumerate(zip(originals, args, strict=True)):
            if isinstance(before, np.ndarray) and not (
                isinstance(after, np.ndarray) and before.shape == after.shape
                and np.array_equal(before, _plain(after), equal_nan=True)
            ):
                raise _ReaderError(
                    f"your function changed its argument number {i + 1} in place (on the "
                    f"case: {case.label}); work on a copy and return new arrays"
                )
        if out is None:
            return _Outcome("none")
        if out is Ellipsis:
            return _Outcome("ellipsis")
        return _Outcome("ok", outputs=self._reader_outputs(out, case), raw=out)

    def _reader_outputs(self, out: Any, case: Case) -> tuple[np.ndarray, ...]:
        if self.n_outputs == 1:
            items = (out,)
        else:
            if not isinstance(out, (tuple, list)) or len(out) != self.n_outputs:
                got = (
                    f"{_a(type(out).__name__)} of length {len(out)}"
                    if isinstance(out, (tuple, list)) else _a(type(out).__name__)
                )
                raise _ReaderError(
                    f"your function should return a tuple of {self.n_outputs} arrays "
                    f"({', '.join(self.output_names)}); it returned {got} (on the case: "
                    f"{case.label})"
                )
            items = tuple(out)
        for name, item in zip(self.output_names, items, strict=True):
            if item is None:
                raise _ReaderError(
                    f"your function returned None as {name} for {case.label}: did you forget "
                    f"to compute it?"
                )
        return tuple(_to_array(item, f"the returned {name}") for name, item in
                     zip(self.output_names, items, strict=True))

    def _validate(self, got: tuple[np.ndarray, ...], want: _Expected, case: Case) -> None:
        for name, g, w, dtype in zip(self.output_names, got, want.values, want.dtypes,
                                     strict=True):
            if g.shape != w.shape:
                raise _ReaderError(
                    f"the returned {name} has shape {g.shape} but should have shape {w.shape} "
                    f"(on the case: {case.label})"
                )
            if not _issubdtype(g.dtype, _floating):
                raise _ReaderError(
                    f"the returned {name} has dtype {g.dtype}; expected a floating array "
                    f"like the input (on the case: {case.label})"
                )
            if g.dtype != dtype:
                raise _ReaderError(
                    f"the returned {name} has dtype {g.dtype} but should have dtype {dtype}, "
                    f"the dtype of the input: keep the input's precision (on the case: "
                    f"{case.label})"
                )
            if not _isfinite(g).all() and _isfinite(w).all():
                raise _ReaderError(
                    f"the returned {name} contains NaN or inf (on the case: {case.label}); "
                    f"look for a division by zero or the square root of a negative number"
                )

    def _close(self, got: tuple[np.ndarray, ...], want: _Expected,
               values: tuple[np.ndarray, ...] | None = None) -> bool:
        values = want.values if values is None else values
        if len(got) != len(values):
            return False
        return all(_within(g, w, want.rtol, atol)
                   for g, w, atol in zip(got, values, want.atol, strict=True))

    def _float32_roundoff(self, case: Case, got: tuple[np.ndarray, ...],
                          want: _Expected) -> bool:
        """Whether a float64 case's wrong output is off by no more than float32 round-off:
        what the reference itself gives when it runs in float32."""
        if want.float32:
            return False
        try:
            r32 = self._outputs_of(self.reference(*_downcast(_deepcopy(case.args))))
        except Exception:
            return False
        for g, w, r in zip(got, want.values, r32, strict=True):
            if g.shape != w.shape or r.shape != w.shape:
                return False
            scale = float(np.max(np.abs(w))) if w.size else 0.0
            allowed = max(16 * _largest_difference(r, w), 64 * F32_EPS * scale)
            if _largest_difference(g, w) > allowed:
                return False
        return True

    def _judge(self, answer: Any) -> Mistake | str | None:
        if _is_stub(answer):
            raise _ReaderError("no function given yet", NOT_ATTEMPTED)
        if not callable(answer):
            raise _ReaderError(
                f"expected a function{f' {self.signature}' if self.signature else ''}; "
                f"got {_a(type(answer).__name__)}"
            )
        own = _own_code(answer)
        if (own is not None or answer is self.reference) and not any(
            answer is m.answer for m in self.mistakes
        ):
            where = f" ({own})" if own else ""
            raise _ReaderError(
                f"that is bncourse's own implementation{where}: write yours, in your own code"
            )
        # Everything the answer is compared with is computed before it runs.
        cases = self.all_cases()
        wanted = [self._expected(case) for case in cases]
        wrong = {m.name: [self._mistake_outputs(m, case) for case in cases]
                 for m in self.mistakes}

        deadline = _perf_counter() + self.time_limit
        outcomes = [self._run_reader(answer, case, deadline) for case in cases]
        kinds = [o.kind for o in outcomes]
        if all(k == "not implemented" for k in kinds):
            raise _ReaderError(
                "your function still raises NotImplementedError: replace the stub with your "
                "code", NOT_ATTEMPTED,
            )
        if all(k == "ellipsis" for k in kinds):
            raise _ReaderError(
                "your function returned Ellipsis (...): replace the stub with your code",
                NOT_ATTEMPTED,
            )
        for case, outcome in zip(cases, outcomes, strict=True):
            self._explain_outcome(case, outcome)

        got_all = [o.outputs for o in outcomes]
        invalid: _ReaderError | None = None
        wrong_cases: list[tuple[Case, tuple[np.ndarray, ...], _Expected]] = []
        for case, got, want in zip(cases, got_all, wanted, strict=True):
            try:
                self._validate(got, want, case)
            except _ReaderError as e:
                invalid = invalid or e
                continue
            if not self._close(got, want):
                wrong_cases.append((case, got, want))
        if invalid is None and not wrong_cases:
            return None
        # A wrong answer: name the catalogued mistake it agrees with on every case (shapes
        # included, so a gradient summed over the wrong axes is recognised too).
        for mistake in self.mistakes:
            outs = wrong[mistake.name]
            if all(out is not None and self._close(got, want, out)
                   for got, want, out in zip(got_all, wanted, outs, strict=True)):
                return mistake
        if invalid is not None:
            raise invalid
        case, got, want = wrong_cases[0]
        worst = max(_largest_difference(g, w) for g, w in zip(got, want.values, strict=True))
        names = [
            n for n, g, w, atol in zip(self.output_names, got, want.values, want.atol,
                                       strict=True)
            if not _within(g, w, want.rtol, atol)
        ]
        verb = "differs" if len(names) == 1 else "differ"
        if all(self._float32_roundoff(c, g, w) for c, g, w in wrong_cases):
            return (
                f"{' and '.join(names)} {verb} from the reference by at most {worst:.3g} (on "
                f"the case: {case.label}): the difference is at float32 round-off; the check "
                f"works in float64, so compute in the input's precision (float64 here) "
                f"without converting to float32 or to torch's default dtype."
            )
        return (
            f"{' and '.join(names)} {verb} from the reference on the case: {case.label} "
            f"(largest absolute difference {worst:.3g}). This is not one of the usual mistakes. "
            + self._nudge()
        )

    def _explain_outcome(self, case: Case, outcome: _Outcome) -> None:
        """A failure for a case on which the function did not return outputs."""
        where = f"on the case: {case.label}, called with {_describe_args(case.args)}"
        if outcome.kind == "not implemented":
            raise _ReaderError(
                f"your function raised NotImplementedError ({where}) although it answered "
                f"other cases: it must handle every input the statement allows"
            )
        if outcome.kind == "exit":
            raise _ReaderError(
                f"your function called sys.exit() or raised SystemExit ({where}); return "
                f"the result instead"
            )
        if outcome.kind == "error":
            raise _ReaderError(
                f"your function raised {_exception_text(outcome.error)} ({where})"
            )
        if outcome.kind == "none":
            raise _ReaderError(
                f"your function returned None for {case.label}: did you forget `return`?"
            )
        if outcome.kind == "ellipsis":
            raise _ReaderError(
                f"your function returned Ellipsis (...) for {case.label} but answered other "
                f"cases: every branch must return the result"
            )


# --------------------------------------------------------------------------------------
# Number exercises
# --------------------------------------------------------------------------------------

#: A plain number, as written in the answer field (after the minus sign is normalised).
NUMBER_TEXT = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_NUMBER_TEXT = re.compile(rf"^{NUMBER_TEXT}$")
#: A number without its sign, for the two sides of a fraction.
UNSIGNED_TEXT = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
#: A fraction ``a/b``: an optional sign, then two unsigned numbers around the slash.
FRACTION_TEXT = rf"([+-]?)({UNSIGNED_TEXT})[ \t]*/[ \t]*({UNSIGNED_TEXT})"
_FRACTION_TEXT = re.compile(rf"^{FRACTION_TEXT}$")
#: The Unicode minus sign, read as ``-``.
UNICODE_MINUS = "\u2212"


class NumberTextError(ValueError):
    """A text that is not a number the answer field accepts; ``key`` names the message in
    :data:`MESSAGES` and ``fields`` fills it."""

    def __init__(self, key: str, **fields: str) -> None:
        self.key = key
        self.fields = fields
        super().__init__(MESSAGES[key].format(**fields))


def read_number(text: str) -> float | None:
    """The number a person wrote in an answer field; ``None`` for an empty field.

    The rules (the web page's checker follows the same ones, and
    ``tests/data/number_inputs.json`` holds test vectors for both):

    1. Surrounding whitespace is ignored (Python's ``str.strip``); an empty field is no
       answer yet (``None``).
    2. The Unicode minus sign U+2212 counts as ``-``, wherever it is (a leading sign, an
       exponent's sign).
    3. A plain number (:data:`NUMBER_TEXT`): an optional sign, digits with an optional
       decimal point, an optional exponent: ``0.25``, ``-.5``, ``5.``, ``+3``, ``1e-3``. No
       spaces inside, no ``_``, no hexadecimal, no ``inf`` or ``nan``. A value too large for a
       float (``1e400``) is read as infinity, which the checker refuses as not finite.
    4. A fraction ``a/b`` (:data:`FRACTION_TEXT`): an optional sign before ``a``, then two
       unsigned plain numbers, with any spaces or tabs around the slash: ``1/4``, ``-1 / 4``,
       ``1.5/2``. Its value is ``a / b`` in floating point, the sign applied after.
       A denominator of 0 is refused (message ``zero_denominator``). A sign after the slash
       (``3/-4``), more than one slash, or a comma in a fraction is not understood.
    5. A decimal comma, when unambiguous: a text with exactly one comma, no dot and no slash
       is read with the comma as the decimal point (``6,5`` is 6.5, ``-1,25`` is -1.25,
       ``6,5e-3`` is 0.0065) if that gives a plain number, except when the digits after the
       comma (up to an exponent) are exactly three: ``1,000`` could be a thousands separator,
       so it is refused as ambiguous, naming both readings (message ``ambiguous_comma``, with
       ``thousands`` the text without the comma and ``decimal`` the text with a point).
    6. Anything else is refused with the ``not_a_number`` message, which quotes the text (cut
       at 40 characters, as ``_quoted`` writes it).

    Raises :class:`NumberTextError` for a refused text.
    """
    t = text.strip()
    if not t:
        return None
    t = t.replace(UNICODE_MINUS, "-")
    if _NUMBER_TEXT.match(t):
        return float(t)
    fraction = _FRACTION_TEXT.match(t)
    if fraction:
        sign, a, b = fraction.groups()
        if float(b) == 0.0:
            raise NumberTextError("zero_denominator", text=_quoted(text))
        value = float(a) / float(b)
        return -value if sign == "-" else value
    if t.count(",") == 1 and "." not in t and "/" not in t:
        point = t.replace(",", ".")
        if _NUMBER_TEXT.match(point):
            after = re.split("[eE]", t.split(",")[1])[0]
            if re.fullmatch("[0-9]{3}", after):
                raise NumberTextError("ambiguous_comma", text=_quoted(text),
                                      thousands=t.replace(",", ""), decimal=point)
            return float(point)
    raise NumberTextError("not_a_number", text=_quoted(text))


def page_answer(text: str, kind: str) -> Any:
    """What the web page's answer field ``text`` stands for as a Python answer.

    A number exercise's field that :func:`read_number` reads (``"0.25"``, ``"-1e-3"``,
    ``" 4 "``, ``"1/4"``, ``"6,5"``, ``"−1.25"``) is that float; anything else stays the
    text, on which ``check`` gives the message the page gives. A choice exercise's answer is
    the text. The page's checker gives, for ``text``, the verdict and message that ``check``
    gives for this value.
    """
    if kind == "number":
        try:
            value = read_number(text)
        except NumberTextError:
            return text
        return text if value is None else value
    return text


def _as_real(answer: Any) -> float:
    if isinstance(answer, (bool, np.bool_)):
        raise _ReaderError("got True/False; expected a number")
    if isinstance(answer, numbers.Real):
        return float(answer)
    if isinstance(answer, decimal.Decimal):
        return float(answer)
    if isinstance(answer, np.ndarray):
        if answer.ndim == 0 and np.issubdtype(answer.dtype, np.number) and not np.issubdtype(
                answer.dtype, np.complexfloating):
            return float(answer)
        if answer.ndim == 0:
            raise _ReaderError(f"got a 0-d array of dtype {answer.dtype}; expected a real number")
        raise _ReaderError(f"got an array of shape {answer.shape}; expected a single number")
    if type(answer).__module__.startswith("torch") and hasattr(answer, "item"):
        if answer.numel() == 1 and answer.dim() == 0 and not answer.is_complex():
            return float(answer.item())
        raise _ReaderError(
            f"got a tensor of shape {tuple(answer.shape)}; expected a single real number"
        )
    if isinstance(answer, str):
        try:
            read_number(answer)
        except NumberTextError as e:
            raise _ReaderError(str(e)) from None
        raise _ReaderError(MESSAGES["quoted_number"].format(text=_quoted(answer)))
    if isinstance(answer, numbers.Complex):
        raise _ReaderError("got a complex number; expected a real number")
    raise _ReaderError(f"got {_a(type(answer).__name__)}; expected a number")


def distinct_digits(x: float, value: float) -> str:
    """``x`` written with enough significant digits to differ from ``value`` written alike.

    Six digits (``%.6g``) when they already differ, else the fewest from 7 to 17 that do, so
    that a wrong answer close to the value is never shown as the value itself. The page's
    checker writes a wrong number the same way (``tests/data/number_digits.json``).
    """
    for digits in range(6, 18):
        shown = f"{x:.{digits}g}"
        if shown != f"{value:.{digits}g}":
            return shown
    return f"{x:.17g}"


@dataclass
class NumberExercise(Exercise):
    """The answer is a real number, correct within ``rtol``/``atol`` of ``value``.

    Each catalogued mistake's ``answer`` is a wrong value, matched with the same tolerance
    (or the mistake's own ``rtol``/``atol``, for near misses). When the exact value is 0,
    ``zero_scale`` is the size of the terms that cancel to give it: an answer within float32
    round-off of such terms (``ZERO_ROUNDOFF_ULPS`` float32 epsilons times ``zero_scale``)
    is right, with the message that it is round-off.
    """

    value: float = math.nan
    rtol: float = 1e-6
    atol: float = 1e-12
    zero_scale: float = 0.0

    #: How many float32 epsilons (of the terms' size) a computed zero may be off by.
    ZERO_ROUNDOFF_ULPS = 64

    def __post_init__(self) -> None:
        self.kind = "number"
        if not math.isfinite(self.value):
            raise TypeError(f"exercise {self.id}: a number exercise needs a finite value")
        if self.zero_scale and self.value != 0:
            raise TypeError(f"exercise {self.id}: zero_scale is for exercises whose value is 0")

    @property
    def roundoff(self) -> float:
        """The largest answer that counts as a computed zero (0 when there is none)."""
        return self.ZERO_ROUNDOFF_ULPS * F32_EPS * self.zero_scale

    def _matches(self, x: float, target: float, rtol: float | None = None,
                 atol: float | None = None) -> bool:
        rtol = self.rtol if rtol is None else rtol
        atol = self.atol if atol is None else atol
        return abs(x - target) <= max(rtol * max(abs(x), abs(target)), atol)

    def _judge(self, answer: Any) -> Mistake | str | None:
        if _is_stub(answer) or (isinstance(answer, str) and not answer.strip()):
            raise _ReaderError(MESSAGES["number_stub"], NOT_ATTEMPTED)
        x = _as_real(answer)
        if not math.isfinite(x):
            raise _ReaderError(MESSAGES["not_finite"].format(x=x))
        if self._matches(x, self.value):
            return None
        if self.value == 0 and abs(x) <= self.roundoff:
            raise _ReaderError(MESSAGES["roundoff"].format(x3=f"{x:.3g}"), PASSED)
        for mistake in self.mistakes:
            if self._matches(x, float(mistake.answer), mistake.rtol, mistake.atol):
                return mistake
        return MESSAGES["wrong_number"].format(x=distinct_digits(x, self.value),
                                               nudge=self._nudge())

    def page_data(self) -> dict[str, Any]:
        return {**super().page_data(), "value": self.value, "rtol": self.rtol,
                "atol": self.atol, "roundoff": self.roundoff,
                "mistakes": [{"name": m.name, "message": m.message, "answer": float(m.answer),
                              "rtol": m.rtol, "atol": m.atol} for m in self.mistakes]}


# --------------------------------------------------------------------------------------
# Choice exercises
# --------------------------------------------------------------------------------------

#: A choice as written: a letter, perhaps in parentheses or followed by ")", "." or ":".
CHOICE_TEXT = r"^\(?\s*([a-z])\s*[).:]?$"
_CHOICE = re.compile(CHOICE_TEXT)


def choice_letter(text: str) -> str:
    """The option letter of a written choice: ``"(b)"``, ``"b)"``, ``"b."``, ``"d:"`` and
    ``" B "`` all give ``"b"``; anything else is returned stripped and in lower case."""
    stripped = text.strip().lower()
    match = _CHOICE.match(stripped)
    return match.group(1) if match else stripped


@dataclass
class ChoiceExercise(Exercise):
    """The answer is one option letter (any case); ``options`` maps letters to their text.

    A catalogued mistake's ``answer`` is a wrong letter: each wrong option can carry its own
    message.
    """

    options: dict[str, str] = field(default_factory=dict)
    answer: str = ""

    _default_nudge = "Read the options again."

    def __post_init__(self) -> None:
        self.kind = "choice"
        self.options = {k.lower(): v for k, v in self.options.items()}
        self.answer = self.answer.lower()
        if self.answer not in self.options:
            raise TypeError(f"exercise {self.id}: the answer must be one of the options")

    def _judge(self, answer: Any) -> Mistake | str | None:
        if _is_stub(answer) or (isinstance(answer, str) and not answer.strip()):
            raise _ReaderError(MESSAGES["choice_stub"], NOT_ATTEMPTED)
        if not isinstance(answer, str):
            raise _ReaderError(
                f"got {_a(type(answer).__name__)}; answer with an option letter as a string, "
                f"e.g. 'a'"
            )
        letter = choice_letter(answer)
        if letter not in self.options:
            valid = ", ".join(f"'{k}'" for k in sorted(self.options))
            raise _ReaderError(MESSAGES["not_an_option"].format(text=_quoted(answer),
                                                                 valid=valid))
        if letter == self.answer:
            return None
        for mistake in self.mistakes:
            if str(mistake.answer).lower() == letter:
                return mistake
        return MESSAGES["wrong_option"].format(letter=letter, nudge=self._nudge())

    def page_data(self) -> dict[str, Any]:
        return {**super().page_data(), "options": dict(self.options), "answer": self.answer,
                "mistakes": [{"name": m.name, "message": m.message,
                              "answer": str(m.answer).lower()} for m in self.mistakes]}


# --------------------------------------------------------------------------------------
# Progress through the exercises of this session
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Every exercise, chapter by chapter, with its latest verdict in this session.

    Shows itself as a table in a notebook and as plain text elsewhere.
    """

    rows: tuple[tuple[int, str, str, str, str], ...]  # chapter, id, title, kind, status

    def counts(self) -> dict[str, int]:
        out = {PASSED: 0, FAILED: 0, NOT_ATTEMPTED: 0}
        for row in self.rows:
            out[row[4]] += 1
        return out

    def _summary(self) -> str:
        c = self.counts()
        return (f"{c[PASSED]} of {len(self.rows)} exercises passed, {c[FAILED]} not yet, "
                f"{c[NOT_ATTEMPTED]} not attempted")

    def __str__(self) -> str:
        lines = [self._summary()]
        chapter = None
        width = max((len(r[1]) for r in self.rows), default=0)
        for ch, eid, title, _kind, status in self.rows:
            if ch != chapter:
                chapter = ch
                lines.append(f"Chapter {ch}")
            lines.append(f"  {_MARKS[status]} {eid:<{width}}  {_STATUS_WORDS[status]:<13}  {title}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        parts = [f'<div class="bncourse-progress"><p>{html.escape(self._summary())}</p>']
        chapter = None
        for ch, eid, title, kind, status in self.rows:
            if ch != chapter:
                if chapter is not None:
                    parts.append("</tbody></table>")
                chapter = ch
                parts.append(
                    f"<table><caption>Chapter {ch}</caption><thead><tr><th>Exercise</th>"
                    "<th>Id</th><th>Kind</th><th>Latest verdict</th></tr></thead><tbody>"
                )
            css = status.replace(" ", "-")
            parts.append(
                f'<tr class="bncourse-{css}"><td>{html.escape(title)}</td>'
                f"<td><code>{html.escape(eid)}</code></td><td>{html.escape(kind)}</td>"
                f'<td class="bncourse-verdict">{_MARKS[status]} {_STATUS_WORDS[status]}</td></tr>'
            )
        if chapter is not None:
            parts.append("</tbody></table>")
        parts.append("</div>")
        return "".join(parts)


_STATUS_WORDS = {PASSED: "correct", FAILED: "not yet", NOT_ATTEMPTED: "not attempted"}


def progress_of(exercises: Sequence[Exercise]) -> Progress:
    """The :class:`Progress` of ``exercises``, from the latest verdicts of this session."""
    rows = []
    for e in sorted(exercises, key=lambda e: e.chapter):  # stable: book order within a chapter
        latest = _LATEST.get(e.id)
        rows.append((e.chapter, e.id, e.title, e.kind,
                     latest.status if latest is not None else NOT_ATTEMPTED))
    return Progress(tuple(rows))


def page_data(exercises: Sequence[Exercise]) -> dict[str, Any]:
    """Everything the web page's checker needs, for ``exercises``: one JSON document.

    The page reads a number as :func:`read_number` does (with ``number_text`` and
    ``fraction_text``, the regular expressions the Python checker uses) and a choice with
    ``choice_text``, writes a wrong number as :func:`distinct_digits` does, fills
    ``messages`` as :meth:`check` does,
    and judges with each exercise's values, tolerances and catalogue.
    """
    return {
        "format": 1,
        "number_text": NUMBER_TEXT,
        "fraction_text": FRACTION_TEXT,
        "choice_text": CHOICE_TEXT,
        "quoted_max": 40,
        "messages": dict(MESSAGES),
        "titles": {PASSED: "Correct", FAILED: "Not yet", NOT_ATTEMPTED: "Not attempted"},
        "exercises": {e.id: e.page_data() for e in exercises},
    }
