"""The verdict table of the chapter on why BN helps: one row per claim, each asserted.

Every section of the chapter ends with one call::

    from bncourse.why import table

    table.record(1, claim="BN reduces internal covariate shift",
                 verdict="does not hold", effect="test accuracy, noisy BN minus BN (points)",
                 estimate=paired_difference(noisy, bn), expect="indistinguishable",
                 experiment="noisy BN on the digits MLP, 10 seeds",
                 reference="santurkar2018how")

:func:`record` asserts the estimate against ``expect`` before it stores the row, so a verdict
cannot be written down that its data do not support: ``"greater"`` (the interval lies above
zero; above one for a :class:`~bncourse.claims.Ratio`), ``"less"`` (below), or
``"indistinguishable"`` (the interval contains no-difference). Recording a claim's number a
second time replaces its row (a cell run twice). :func:`markdown` renders the table with the
effect as ``mean ± s.e. (n)``; :func:`render` shows it in a notebook; :func:`rows` returns the
rows in claim order; :func:`require` asserts that every claim of the chapter has its row;
:func:`glue_rows` glues each row's claim, verdict, effect and experiment (``why-claim-<n>``,
``why-verdict-<n>``, ``why-effect-<n>``, ``why-experiment-<n>``) for the chapter's closing
table, a Markdown cell that cites its references.

The module keeps one table per Python process (one per notebook kernel), so cells in two parts
of the chapter add to the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..claims import Estimate, MedianDifference, Ratio, assert_indistinguishable, assert_ordered

__all__ = ["VERDICTS", "EXPECTATIONS", "CLAIMS", "Row", "record", "rows", "markdown", "render",
           "require", "glue_rows", "clear"]

#: How a verdict starts: the claim holds, does not, or holds only under a condition the
#: verdict names after "holds only when".
VERDICTS = ("holds", "does not hold", "holds only when")

#: What the estimate's interval must show.
EXPECTATIONS = ("greater", "less", "indistinguishable")

#: The claims of the chapter, numbered as its sections.
CLAIMS = tuple(range(1, 9))


@dataclass(frozen=True)
class Row:
    """One claim's verdict, the effect that decides it and where it comes from."""

    number: int
    claim: str
    verdict: str
    effect: str
    estimate: Estimate | Ratio | MedianDifference
    expect: str
    experiment: str
    reference: str

    def effect_text(self, spec: str = ".2g") -> str:
        """The estimate as a sentence quotes it: ``mean ± s.e. (n = ...)`` or a median ratio."""
        return self.estimate.format(spec)

    def reference_text(self) -> str:
        """The reference as a citation role (``{cite:t}`` of each bibliography key)."""
        keys = [k.strip() for k in self.reference.split(",") if k.strip()]
        return ", ".join(f"{{cite:t}}`{k}`" for k in keys)


_ROWS: dict[int, Row] = {}


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"record: {what} must be a non-empty string, got {value!r}")
    if "|" in value or "\n" in value:
        raise ValueError(f"record: {what} must not contain '|' or a line break (it is a cell "
                         f"of a Markdown table), got {value!r}")
    return value.strip()


def record(number: int, *, claim: str, verdict: str, effect: str,
           estimate: Estimate | Ratio | MedianDifference, expect: str, experiment: str,
           reference: str) -> None:
    """Assert ``estimate`` against ``expect`` and store the row of claim ``number``.

    ``verdict`` starts with one of :data:`VERDICTS`; ``effect`` names the quantity and its
    unit (what ``estimate`` measures); ``reference`` is one or more bibliography keys
    separated by commas. Raises ``AssertionError`` (from
    :func:`bncourse.claims.assert_ordered` or :func:`~bncourse.claims.assert_indistinguishable`)
    when the interval does not show what ``expect`` says, ``ValueError`` for a malformed row.
    Returns None, so that a cell ending in the call shows nothing (:func:`rows` has the row).
    """
    if isinstance(number, bool) or not isinstance(number, int) or number not in CLAIMS:
        raise ValueError(f"record: the claim number must be one of {list(CLAIMS)}, "
                         f"got {number!r}")
    verdict = _text(verdict, "verdict")
    if not verdict.startswith(VERDICTS):
        raise ValueError(f"record: the verdict must start with one of {VERDICTS}, "
                         f"got {verdict!r}")
    if not isinstance(estimate, (Estimate, Ratio, MedianDifference)):
        raise ValueError("record: estimate must be a bncourse.claims Estimate, Ratio or "
                         f"MedianDifference (a number has no uncertainty), got "
                         f"{type(estimate).__name__}")
    if expect not in EXPECTATIONS:
        raise ValueError(f"record: expect must be one of {EXPECTATIONS}, got {expect!r}")
    what = f"claim {number} ({claim})"
    if expect == "indistinguishable":
        assert_indistinguishable(estimate, what=what)
    else:
        assert_ordered(estimate, sign=1 if expect == "greater" else -1, what=what)
    row = Row(number, _text(claim, "claim"), verdict, _text(effect, "effect"), estimate,
              expect, _text(experiment, "experiment"), _text(reference, "reference"))
    _ROWS[number] = row


def rows() -> list[Row]:
    """The recorded rows, in claim order."""
    return [_ROWS[k] for k in sorted(_ROWS)]


def require(numbers: tuple[int, ...] = CLAIMS) -> None:
    """Assert that every claim in ``numbers`` has its row (each row was asserted when stored)."""
    missing = [n for n in numbers if n not in _ROWS]
    if missing:
        raise AssertionError(f"the verdict table lacks the rows of claims {missing}")


def clear() -> None:
    """Forget every row (for tests)."""
    _ROWS.clear()


def markdown(spec: str = ".2g") -> str:
    """The table in Markdown: claim, verdict, effect ± s.e., experiment, reference."""
    lines = ["| | Claim | Verdict | Effect (mean ± s.e.) | Experiment | Reference |",
             "|---|---|---|---|---|---|"]
    for r in rows():
        lines.append(f"| {r.number} | {r.claim} | {r.verdict} | {r.effect}: "
                     f"{r.effect_text(spec)} | {r.experiment} | {r.reference_text()} |")
    return "\n".join(lines)


def render(spec: str = ".2g") -> Any:
    """The table for a notebook cell to show (IPython Markdown)."""
    from IPython.display import Markdown

    return Markdown(markdown(spec))


def glue_rows(spec: str = ".2g") -> None:
    """Glue every row's text for the closing table: ``why-claim-<n>``, ``why-verdict-<n>``,
    ``why-effect-<n>`` (the effect's name with its estimate) and ``why-experiment-<n>``."""
    from ..claims import glue

    for r in rows():
        glue(f"why-claim-{r.number}", r.claim)
        glue(f"why-verdict-{r.number}", r.verdict)
        glue(f"why-effect-{r.number}", f"{r.effect}: {r.effect_text(spec)}")
        glue(f"why-experiment-{r.number}", r.experiment)
