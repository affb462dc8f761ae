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
import re
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
        return "Your answer matches the reference."

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


def _exception_text(e: BaseException) -> str:
    """``Type: message`` of an exception, even when its ``__str__`` raises."""
    name = type(e).__name__
    try:
        text = str(e)
    except BaseException:  # an answer's exception whose __str__ itself fails
        return f"{name} (whose message could not be printed)"
    return f"{name}: {text}" if text else name


#: The latest verdict of every exercise checked in this session, by id.
_LATEST: dict[str, CheckResult] = {}


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

    _default_nudge = "Compare your code with the formulas of the chapter step by step."

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
        own = _own_code(answer)
        if (own is not None or answer is self.reference) and not any(
            answer is m.answer for m in self.mistakes
        ):
            where = f" ({own})" if own else ""
            raise _ReaderError(
                f"that is bncourse's own implementation{where}: write yours, in your own code"
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
            f"(largest absolute difference {worst:.3g}). This is not one of the usual mistakes. "
            + self._nudge()
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
        return f"{x:.6g} is not the expected value. " + self._nudge()


# --------------------------------------------------------------------------------------
# Choice exercises
# --------------------------------------------------------------------------------------


_CHOICE = re.compile(r"^\(?\s*([a-z])\s*[).:]?$")


def choice_letter(text: str) -> str:
    """The option letter of a written choice: ``"(b)"``, ``"b)"``, ``"b."``, ``"d:"`` and
    ``" B "`` all give ``"b"``; anything else is returned stripped and in lower case."""
    stripped = text.strip().lower()
    match = _CHOICE.match(stripped)
    return match.group(1) if match else stripped


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
        letter = choice_letter(answer)
        if letter not in self.options:
            valid = ", ".join(repr(k) for k in sorted(self.options))
            raise _ReaderError(f"{answer!r} is not an option; choose one of {valid}")
        if letter == self.answer:
            return None
        for mistake in self.mistakes:
            if str(mistake.answer).lower() == letter:
                return mistake
        return f"option {letter!r} is not right. " + self._nudge()


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
