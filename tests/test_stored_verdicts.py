"""The verdicts stored in the executed chapters: every solution passes, every stub is untouched.

nbval re-runs each chapter and compares its outputs with the stored ones; this test makes sure
the stored ones are the right ones, so that a solution that fails its own check (after a new
case is added to the checker, say) cannot be committed with its failure recorded.
"""

from __future__ import annotations

import json
import re

import pytest

from bncourse.authoring import toc_notebooks

CHAPTERS = [nb for nb in toc_notebooks() if nb.suffix == ".ipynb"]
_VERDICT = re.compile(r"^(✔|✘|…) ([\w.]+): (Correct|Not yet|Not attempted)\.", re.MULTILINE)


def _text(output: dict) -> str:
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    else:
        text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def stored_verdicts(nb: dict) -> list[tuple[int, bool, str, str]]:
    """(cell index, inside a solution block, exercise id, verdict) of every stored check."""
    found, inside = [], False
    for index, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown":
            inside = (inside or "{solution-start}" in source) and "{solution-end}" not in source
            continue
        for output in cell.get("outputs", []):
            for match in _VERDICT.finditer(_text(output)):
                found.append((index, inside, match.group(2), match.group(3)))
    return found


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[nb.stem for nb in CHAPTERS])
def test_every_stored_solution_is_correct_and_every_stub_not_attempted(notebook):
    verdicts = stored_verdicts(json.loads(notebook.read_text(encoding="utf-8")))
    wrong = [
        f"cell {i}: {eid} is '{verdict}' {'in its solution' if inside else 'as a stub'}"
        for i, inside, eid, verdict in verdicts
        if verdict != ("Correct" if inside else "Not attempted")
    ]
    assert verdicts, f"{notebook.name} stores no exercise verdict at all"
    assert not wrong, "\n".join(wrong)


def test_a_failing_solution_is_caught():
    nb = {"cells": [
        {"cell_type": "markdown", "source": "```{solution-start} ex-a\n```"},
        {"cell_type": "code", "source": "check('a.b', f)", "outputs": [
            {"output_type": "execute_result",
             "data": {"text/plain": "✘ a.b: Not yet. the returned dx differs"}}]},
        {"cell_type": "markdown", "source": "```{solution-end}\n```"},
        {"cell_type": "code", "source": "check('a.c', ...)", "outputs": [
            {"output_type": "execute_result",
             "data": {"text/plain": "✔ a.c: Correct. Your answer matches the reference."}}]},
    ]}
    assert stored_verdicts(nb) == [(1, True, "a.b", "Not yet"), (3, False, "a.c", "Correct")]
