"""The exercise checker: kinds of exercise, the verdict, and the catalogue of mistakes.

Three kinds:

* :class:`FunctionExercise`: the answer is a callable. It runs on seeded cases against the
  reference; a failure is matched against the catalogue of known wrong implementations.
* :class:`NumberExercise`: the answer is a real number (int, float, NumPy scalar, 0-d array
  or tensor), compared within a tolerance; known wrong values carry their own message.
* :class:`ChoiceExercise`: the answer is an option letter, in any case.

Whatever the reader passes, :meth:`Exercise.check` returns a :class:`CheckResult` and never
raises; it never shows the reference's values.
"""

from __future__ import annotations

import copy
import html
import math
import numbers
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
    "PASSED",
    "FAILED",
    "NOT_ATTEMPTED",
]

PASSED = "passed"
FAILED = "failed"
NOT_ATTEMPTED = "not attempted"

_MARKS = {PASSED: "✔", FAILED: "✘", NOT_ATTEMPTED: "…"}
_COLOURS = {PASSED: "#1b7a3a", FAILED: "#b3261e", NOT_ATTEMPTED: "#6b6b6b"}
_BACKGROUNDS = {PASSED: "#e8f5ec", FAILED: "#fdecea", NOT_ATTEMPTED: "#f2f2f2"}


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one answer: ``passed``, the ``message`` and a ``status``.

    ``status`` is ``"passed"``, ``"failed"`` or ``"not attempted"``. ``mistake`` names the
    catalogued mistake the answer matched, when one did. Shows itself as a coloured box in
    a notebook and as one line of text elsewhere.
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
        colour = _COLOURS[self.status]
        return (
            f'<div class="bncourse-check bncourse-{self.status.replace(" ", "-")}" '
            f'style="border-left: 4px solid {colour}; background: {_BACKGROUNDS[self.status]}; '
            f'padding: 0.4em 0.8em; margin: 0.3em 0;">'
            f'<strong style="color: {colour};">{_MARKS[self.status]} {self._title()}</strong> '
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
    the tests; ``message`` names the concept the reader missed.
    """

    name: str
    message: str
    answer: Any


class _ReaderError(Exception):
    """The reader's answer could not be judged; the message says why."""

    def __init__(self, message: str, status: str = FAILED) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Exercise:
    """An exercise: its ``id``, ``chapter`` number, ``title``, ``kind`` and catalogue."""

    id: str
    chapter: int
    title: str
    mistakes: Sequence[Mistake] = field(default_factory=tuple)
    hint: str = ""
    kind: str = field(init=False, default="")

    def check(self, answer: Any) -> CheckResult:
        """Judge ``answer``; never raises."""
        try:
            mistake = self._judge(answer)
        except _ReaderError as e:
            return CheckResult(self.id, e.status, str(e))
        except Exception as e:  # a failure in the checker itself must still not reach the reader
            return CheckResult(
                self.id, FAILED,
                f"the checker could not judge this answer ({type(e).__name__}: {e})",
            )
        if mistake is None:
            return CheckResult(self.id, PASSED, self._pass_message())
        if isinstance(mistake, Mistake):
            return CheckResult(self.id, FAILED, mistake.message, mistake=mistake.name)
        return CheckResult(self.id, FAILED, str(mistake))

    def _pass_message(self) -> str:
        return "Your answer matches the reference."

    def _judge(self, answer: Any) -> Mistake | str | None:
        raise NotImplementedError


def _a(type_name: str) -> str:
    """'a list', 'an int': the type name with its article."""
    return f"{'an' if type_name[:1].lower() in 'aeiou' else 'a'} {type_name}"


def _is_stub(value: Any) -> bool:
    return value is None or value is Ellipsis


# --------------------------------------------------------------------------------------
# Function exercises
# --------------------------------------------------------------------------------------


def _to_array(value: Any, what: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        raise _ReaderError(
            f"{what} is a torch.Tensor; this exercise works in NumPy, so return a NumPy array "
            f"(for example t.detach().numpy())"
        )
    raise _ReaderError(f"{what} is {_a(type(value).__name__)}; expected a NumPy array")


def _describe(value: Any) -> str:
    """A short description of an argument: arrays by their shape, never their values."""
    if isinstance(value, np.ndarray):
        return f"array{value.shape}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_describe(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    text = repr(value)
    return text if len(text) <= 40 else f"{type(value).__name__}(...)"


def _describe_args(args: tuple[Any, ...]) -> str:
    return ", ".join(_describe(a) for a in args)


@dataclass
class FunctionExercise(Exercise):
    """The answer is a function; ``reference`` is the correct one.

    ``cases()`` returns the seeded :class:`Case` list. Outputs are a NumPy array or a tuple
    of arrays (``n_outputs``), compared with ``rtol``/``atol``. Each catalogued mistake is a
    function; an answer that fails is named by the first mistake it agrees with on every
    case. ``compare`` may replace the numeric comparison for answers that are not arrays.
    """

    reference: Callable[..., Any] | None = None
    cases: Callable[[], list[Case]] | None = None
    signature: str = ""
    n_outputs: int = 1
    output_names: Sequence[str] = ("output",)
    rtol: float = 1e-7
    atol: float = 1e-9

    def __post_init__(self) -> None:
        self.kind = "function"
        if self.reference is None or self.cases is None:
            raise TypeError(f"exercise {self.id}: a function exercise needs reference and cases")

    # Running one function on one case --------------------------------------------------

    def _run(self, fn: Callable[..., Any], case: Case, reader: bool) -> tuple[np.ndarray, ...]:
        args = copy.deepcopy(case.args)
        originals = copy.deepcopy(case.args)
        try:
            out = fn(*args)
        except NotImplementedError:
            if reader:
                raise _ReaderError(
                    "your function still raises NotImplementedError: replace the stub with "
                    "your code", NOT_ATTEMPTED,
                ) from None
            raise
        except Exception as e:
            if not reader:
                raise
            raise _ReaderError(
                f"your function raised {type(e).__name__}: {e} (on the case: {case.label}, "
                f"called with {_describe_args(case.args)})"
            ) from None
        if reader:
            for i, (before, after) in enumerate(zip(originals, args, strict=True)):
                if isinstance(before, np.ndarray) and not np.array_equal(
                    before, after, equal_nan=True
                ):
                    raise _ReaderError(
                        f"your function changed its argument number {i + 1} in place (on the "
                        f"case: {case.label}); work on a copy and return new arrays"
                    )
        return self._outputs(out, case, reader)

    def _outputs(self, out: Any, case: Case, reader: bool) -> tuple[np.ndarray, ...]:
        if _is_stub(out):
            raise _ReaderError(
                f"your function returned {out!r}: replace the stub with your code", NOT_ATTEMPTED
            )
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
                    f"({', '.join(self.output_names)}); it returned {got}"
                )
            items = tuple(out)
        arrays = []
        for name, item in zip(self.output_names, items, strict=True):
            arrays.append(_to_array(item, f"the returned {name}") if reader else np.asarray(item))
        return tuple(arrays)

    def _validate(
        self, got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...], case: Case
    ) -> None:
        for name, g, w in zip(self.output_names, got, want, strict=True):
            if g.shape != w.shape:
                raise _ReaderError(
                    f"the returned {name} has shape {g.shape} but should have shape {w.shape} "
                    f"(on the case: {case.label})"
                )
            if not np.issubdtype(g.dtype, np.floating):
                raise _ReaderError(
                    f"the returned {name} has dtype {g.dtype}; expected a floating array "
                    f"like the input (on the case: {case.label})"
                )
            if g.dtype != w.dtype:
                raise _ReaderError(
                    f"the returned {name} has dtype {g.dtype} but the input is {w.dtype}: keep "
                    f"the input's precision (on the case: {case.label})"
                )
            if not np.all(np.isfinite(g)) and np.all(np.isfinite(w)):
                raise _ReaderError(
                    f"the returned {name} contains NaN or inf (on the case: {case.label}); "
                    f"look for a division by zero or the square root of a negative number"
                )

    def _close(self, got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> bool:
        return all(
            g.shape == w.shape and np.allclose(g, w, rtol=self.rtol, atol=self.atol)
            for g, w in zip(got, want, strict=True)
        )

    def _judge(self, answer: Any) -> Mistake | str | None:
        if _is_stub(answer):
            raise _ReaderError("no function given yet", NOT_ATTEMPTED)
        if not callable(answer):
            raise _ReaderError(
                f"expected a function{f' {self.signature}' if self.signature else ''}; "
                f"got {_a(type(answer).__name__)}"
            )
        cases = self.cases()
        wanted = [self._run(self.reference, case, reader=False) for case in cases]
        got_all: list[tuple[np.ndarray, ...]] = []
        invalid: _ReaderError | None = None
        first_wrong: tuple[Case, tuple[np.ndarray, ...], tuple[np.ndarray, ...]] | None = None
        for case, want in zip(cases, wanted, strict=True):
            got = self._run(answer, case, reader=True)
            got_all.append(got)
            try:
                self._validate(got, want, case)
            except _ReaderError as e:
                invalid = invalid or e
                continue
            if first_wrong is None and not self._close(got, want):
                first_wrong = (case, got, want)
        if invalid is None and first_wrong is None:
            return None
        # A wrong answer: name the catalogued mistake it agrees with on every case (shapes
        # included, so a gradient summed over the wrong axes is recognised too).
        for mistake in self.mistakes:
            if self._agrees_with(mistake, cases, got_all):
                return mistake
        if invalid is not None:
            raise invalid
        case, got, want = first_wrong
        worst = max(
            float(np.max(np.abs(g - w))) if g.size else 0.0
            for g, w in zip(got, want, strict=True)
        )
        wrong = [
            n for n, g, w in zip(self.output_names, got, want, strict=True)
            if not np.allclose(g, w, rtol=self.rtol, atol=self.atol)
        ]
        return (
            f"{' and '.join(wrong)} {'differs' if len(wrong) == 1 else 'differ'} from the "
            f"reference on the case: {case.label} "
            f"(largest absolute difference {worst:.3g}). This is not one of the usual mistakes; "
            f"{self.hint or 'compare your code with the formulas of the chapter step by step.'}"
        )

    def _agrees_with(
        self, mistake: Mistake, cases: list[Case], got_all: list[tuple[np.ndarray, ...]]
    ) -> bool:
        for case, got in zip(cases, got_all, strict=True):
            try:
                wrong = self._run(mistake.answer, case, reader=False)
            except Exception:
                return False
            if not self._close(got, wrong):
                return False
        return True


# --------------------------------------------------------------------------------------
# Number exercises
# --------------------------------------------------------------------------------------


def _as_real(answer: Any) -> float:
    if isinstance(answer, bool) or isinstance(answer, np.bool_):
        raise _ReaderError("got True/False; expected a number")
    if isinstance(answer, numbers.Real):
        return float(answer)
    if isinstance(answer, np.ndarray):
        if answer.ndim == 0 and np.issubdtype(answer.dtype, np.number):
            return float(answer)
        raise _ReaderError(f"got an array of shape {answer.shape}; expected a single number")
    if type(answer).__module__.startswith("torch") and hasattr(answer, "item"):
        if answer.numel() == 1 and answer.dim() == 0:
            return float(answer.item())
        raise _ReaderError(
            f"got a tensor of shape {tuple(answer.shape)}; expected a single number"
        )
    if isinstance(answer, str):
        raise _ReaderError(f"got the string {answer!r}; expected a number (no quotes)")
    if isinstance(answer, numbers.Complex):
        raise _ReaderError("got a complex number; expected a real number")
    raise _ReaderError(f"got {_a(type(answer).__name__)}; expected a number")


@dataclass
class NumberExercise(Exercise):
    """The answer is a real number, correct within ``rtol``/``atol`` of ``value``.

    Each catalogued mistake's ``answer`` is a wrong value, matched with the same tolerance.
    """

    value: float = math.nan
    rtol: float = 1e-6
    atol: float = 1e-12

    def __post_init__(self) -> None:
        self.kind = "number"
        if not math.isfinite(self.value):
            raise TypeError(f"exercise {self.id}: a number exercise needs a finite value")

    def _matches(self, x: float, target: float) -> bool:
        return math.isclose(x, target, rel_tol=self.rtol, abs_tol=self.atol)

    def _judge(self, answer: Any) -> Mistake | str | None:
        if _is_stub(answer):
            raise _ReaderError("no number given yet", NOT_ATTEMPTED)
        x = _as_real(answer)
        if not math.isfinite(x):
            raise _ReaderError(f"got {x}; expected a finite number")
        if self._matches(x, self.value):
            return None
        for mistake in self.mistakes:
            if self._matches(x, float(mistake.answer)):
                return mistake
        return f"{x:.6g} is not the expected value. " + (
            self.hint or "Work it out again from the formula in the chapter."
        )


# --------------------------------------------------------------------------------------
# Choice exercises
# --------------------------------------------------------------------------------------


@dataclass
class ChoiceExercise(Exercise):
    """The answer is one option letter (any case); ``options`` maps letters to their text."""

    options: dict[str, str] = field(default_factory=dict)
    answer: str = ""

    def __post_init__(self) -> None:
        self.kind = "choice"
        self.options = {k.lower(): v for k, v in self.options.items()}
        self.answer = self.answer.lower()
        if self.answer not in self.options:
            raise TypeError(f"exercise {self.id}: the answer must be one of the options")

    def _judge(self, answer: Any) -> Mistake | str | None:
        if _is_stub(answer) or (isinstance(answer, str) and not answer.strip()):
            raise _ReaderError("no option chosen yet", NOT_ATTEMPTED)
        if not isinstance(answer, str):
            raise _ReaderError(
                f"got {_a(type(answer).__name__)}; answer with an option letter as a string, "
                f"e.g. 'a'"
            )
        letter = answer.strip().lower()
        if letter not in self.options:
            valid = ", ".join(repr(k) for k in sorted(self.options))
            raise _ReaderError(f"{answer!r} is not an option; choose one of {valid}")
        if letter == self.answer:
            return None
        for mistake in self.mistakes:
            if str(mistake.answer).lower() == letter:
                return mistake
        return f"option {letter!r} is not right. " + (self.hint or "Read the options again.")
