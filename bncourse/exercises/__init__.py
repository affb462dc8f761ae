"""Auto-checked exercises: ``check(exercise_id, answer)`` gives a verdict on the spot.

Each chapter's exercises live in their own module (``formula``, ``gradients``,
``parameters``, ``invariance``) together with their catalogues of mistakes. ``EXERCISES``
maps every id to its exercise, in book order.

>>> from bncourse.exercises import check
>>> check("invariance.gradient_scale", ...)  # an untouched stub
… invariance.gradient_scale: Not attempted. no number given yet
"""

from __future__ import annotations

from typing import Any

from . import (
    _cases,
    distributed,
    formula,
    gradients,
    inference,
    invariance,
    parameters,
    ports,
    why,
    why_mechanisms,
    wild,
)
from .core import (
    FAILED,
    NOT_ATTEMPTED,
    PASSED,
    Case,
    CheckResult,
    ChoiceExercise,
    Exercise,
    FunctionExercise,
    Mistake,
    NumberExercise,
    Progress,
    page_data,
    progress_of,
)

__all__ = [
    "EXERCISES",
    "check",
    "hint",
    "progress",
    "site_data",
    "Progress",
    "CheckResult",
    "Exercise",
    "FunctionExercise",
    "NumberExercise",
    "ChoiceExercise",
    "Case",
    "Mistake",
    "PASSED",
    "FAILED",
    "NOT_ATTEMPTED",
]


def _collect() -> dict[str, Exercise]:
    registry: dict[str, Exercise] = {}
    for module in (formula, gradients, parameters, invariance, inference, distributed, ports, why,
                   why_mechanisms, wild):
        for exercise in module.EXERCISES:
            if exercise.id in registry:
                raise RuntimeError(f"two exercises share the id {exercise.id!r}")
            registry[exercise.id] = exercise
            if isinstance(exercise, FunctionExercise) and exercise.rule is None:
                exercise.rule = _cases.RULES.get(exercise.id)
    return registry


EXERCISES: dict[str, Exercise] = _collect()


def _get(exercise_id: str) -> Exercise:
    try:
        return EXERCISES[exercise_id]
    except KeyError:
        known = ", ".join(sorted(EXERCISES))
        raise KeyError(f"no exercise with id {exercise_id!r}; the ids are: {known}") from None


def check(exercise_id: str, answer: Any) -> CheckResult:
    """Check ``answer`` against exercise ``exercise_id``; raises ``KeyError`` for an unknown id."""
    return _get(exercise_id).check(answer)


def hint(exercise_id: str, n: int = 1) -> str:
    """The ``n``-th hint for exercise ``exercise_id`` (1 is the first); each says a little more,
    the last stops short of the answer, and asking past the last says there are no more."""
    return _get(exercise_id).hint_text(n)


def site_data() -> dict[str, Any]:
    """The web page's copy of every exercise (values, tolerances, options, catalogue, hints,
    messages), written to the built site as JSON: see :func:`core.page_data`."""
    return page_data(list(EXERCISES.values()))


def progress() -> Progress:
    """Every exercise, chapter by chapter, with its latest verdict in this session: a table
    in a notebook, plain text elsewhere."""
    return progress_of(list(EXERCISES.values()))
