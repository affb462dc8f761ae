"""The stored outputs of the chapters are the same on any machine: no round-off is stored.

nbval compares every stored output with a fresh run, and `make test` runs it at one and at four
threads. Those runs only see this machine's CPU. This test catches, without running anything,
the two kinds of output that differ between CPUs even when they agree here: a glued float with
more digits than any text shows (its last digits are round-off), and a printed number at the
scale of double-precision round-off (a measured 3.3e-16 is 4.4e-16 on another machine; the
chapters print the bound they assert instead).
"""

from __future__ import annotations

import json
import re

import pytest

from bncourse.authoring import toc_notebooks
from bncourse.claims import GLUE_DIGITS, round_significant

NOTEBOOKS = toc_notebooks()
GLUE_MIME = "application/papermill.record/text/plain"
# A number with a fractional mantissa at the scale of float64 round-off: 3.3e-16, 1.25e-14.
# A bound written as a power of ten ("below 1e-15") has no fractional mantissa and is allowed.
ROUND_OFF = re.compile(r"(?<![\w.])\d\.\d+e-(1[3-9]|[2-9]\d)\b")


def _code_outputs(nb):
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            for output in cell.get("outputs", []):
                yield index, output


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_glued_floats_keep_no_round_off_digits(notebook):
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    long = []
    for index, output in _code_outputs(nb):
        record = output.get("data", {}).get(GLUE_MIME)
        if record is None:
            continue
        text = "".join(record) if isinstance(record, list) else record
        try:
            value = float(text)
        except ValueError:
            continue  # a string or a figure: nothing to round
        if "." in text or "e" in text.lower():
            if value != round_significant(value, GLUE_DIGITS):
                long.append(f"cell {index}: {text}")
    assert not long, (
        f"{notebook.name}: glued floats with more than {GLUE_DIGITS} significant digits (their "
        f"last digits are round-off; glue with bncourse.claims.glue): {long}")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_output_prints_raw_round_off(notebook):
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    found = []
    for index, output in _code_outputs(nb):
        texts = [output.get("text", "")]
        texts.append(output.get("data", {}).get("text/plain", ""))
        for text in texts:
            text = "".join(text) if isinstance(text, list) else text
            found += [f"cell {index}: {m.group(0)}" for m in ROUND_OFF.finditer(text)]
    assert not found, (
        f"{notebook.name}: outputs print round-off, which differs between CPUs; assert a "
        f"bound and print it instead: {found}")


def test_the_round_off_pattern_tells_a_measurement_from_a_bound():
    assert ROUND_OFF.search("largest gap 3.3e-16")
    assert ROUND_OFF.search("difference 1.25e-14,")
    assert not ROUND_OFF.search("largest gap below 1e-15")
    assert not ROUND_OFF.search("error 4.1e-07")  # float32 round-off of a model: a result
    assert not ROUND_OFF.search("eps = 1e-05")


_GLUE_TEXT = re.compile(r"\{glue:text\}`([^`:]+):([^`]*)`")


def _significant(text: str) -> str:
    """The significant digits of a number written in decimal or scientific notation."""
    mantissa = text.lower().split("e")[0].lstrip("+-").replace(".", "").lstrip("0")
    return mantissa


def double_rounded(stored: str, spec: str) -> bool:
    """True when ``stored`` keeps exactly one digit beyond what ``spec`` shows, and it is a 5.

    Then the text rounds a value that was already rounded, and may show the wrong last digit
    (0.70535 glued with three digits is 0.705, which ``.2f`` shows as 0.70, not 0.71).
    """
    if spec[-1:] not in ("f", "e", "g", "%"):
        return False  # an integer or a string: nothing is rounded
    try:
        value = float(stored)
    except ValueError:
        return False
    shown = format(value, spec)
    digits = _significant(stored)
    shown_digits = _significant(shown.replace(",", "").rstrip("%"))
    return (len(digits) == len(shown_digits) + 1 and digits.endswith("5")
            and not shown_digits.endswith("5"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_glued_number_is_rounded_twice(notebook):
    from bncourse.authoring import glue_values

    nb = json.loads(notebook.read_text(encoding="utf-8"))
    values = glue_values(nb)
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    bad = []
    for key, spec in _GLUE_TEXT.findall(prose):
        record = values.get(key, {}).get("text/plain")
        if record is None:
            continue  # a missing key is test_student_notebooks' and the build's business
        text = "".join(record) if isinstance(record, list) else record
        if double_rounded(text, spec):
            bad.append(f"{key}: stored {text}, shown as {format(float(text), spec)}")
    assert not bad, (
        f"{notebook.name}: glued with one digit more than the text shows, so the text rounds a "
        f"rounded value (glue with digits at least two above what is shown): {bad}")


def test_the_double_rounding_check_tells_the_cases_apart():
    assert double_rounded("0.705", ".2f")  # 0.70535 stored with 3 digits: shows 0.70
    assert double_rounded("0.245", ".2f")
    assert not double_rounded("0.70535", ".2f")  # enough digits kept
    assert not double_rounded("0.704", ".2f")  # rounds the same either way
    assert not double_rounded("12", "d")
    assert double_rounded("1.25", ".1f")
    assert not double_rounded("97.2222", ".1f")
