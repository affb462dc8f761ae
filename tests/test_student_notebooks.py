"""Student notebooks: solutions removed, outputs cleared, and every check "not attempted"."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient

from bncourse.authoring import student_notebook, toc_notebooks
from bncourse.exercises import EXERCISES

CHAPTERS = toc_notebooks()
CHECK = re.compile(r"check\(\s*[\"']([\w.]+)[\"']")


def _md(text):
    return nbformat.v4.new_markdown_cell(text)


def _code(text):
    cell = nbformat.v4.new_code_cell(text)
    cell.outputs = [nbformat.v4.new_output("stream", text="out\n")]
    cell.execution_count = 1
    return cell


def test_student_notebook_removes_gated_solutions_and_clears_outputs():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _md("# T"),
        _code("a = 1"),
        _md("```{solution-start} ex-x\n:class: dropdown\n```"),
        _code("secret = 42"),
        _md("Why it works."),
        _md("```{solution-end}\n```"),
        _code("b = 2"),
    ]
    student = student_notebook(nb)
    sources = [c.source for c in student.cells]
    assert sources == ["# T", "a = 1", "b = 2"]
    assert all(c.outputs == [] and c.execution_count is None
               for c in student.cells if c.cell_type == "code")
    assert len(nb.cells) == 7, "the original notebook must not be modified"


@pytest.mark.parametrize(
    "cells",
    [
        ["```{solution-start} a\n```", "x"],
        ["x", "```{solution-end}\n```"],
        ["```{solution-start} a\n```", "```{solution-start} b\n```"],
    ],
)
def test_unbalanced_solution_blocks_are_refused(cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [_md(c) for c in cells]
    with pytest.raises(ValueError, match="solution"):
        student_notebook(nb)


def _check_verdicts(nb) -> list[str]:
    verdicts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/plain", "")
            m = re.match(r"^\S+ ([\w.]+): (Correct|Not yet|Not attempted)\.", text)
            if m:
                verdicts.append(m.group(2))
    return verdicts


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_uses_at_least_four_registered_exercises_and_solutions_pass(path):
    nb = nbformat.read(path, as_version=4)
    used = {m for c in nb.cells if c.cell_type == "code" for m in CHECK.findall(c.source)}
    unknown = used - set(EXERCISES)
    assert not unknown, f"{path.name} checks unregistered exercises {sorted(unknown)}"
    assert len(used) >= 4, f"{path.name} has {len(used)} exercises: {sorted(used)}"
    verdicts = _check_verdicts(nb)
    assert "Not yet" not in verdicts, f"{path.name} stores a failing check"
    assert verdicts.count("Correct") >= len(used), (
        f"{path.name}: {verdicts.count('Correct')} solution checks pass for {len(used)} exercises"
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_student_notebook_executes_and_every_check_is_not_attempted(path, tmp_path):
    student = nbformat.from_dict(student_notebook(nbformat.read(path, as_version=4)))
    NotebookClient(student, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    verdicts = _check_verdicts(student)
    assert len(verdicts) >= 4, f"{path.name}: the student notebook shows {len(verdicts)} checks"
    assert set(verdicts) == {"Not attempted"}, f"{path.name}: verdicts {verdicts}"


def test_student_zip_holds_every_chapter_and_the_data_they_read(tmp_path):
    import zipfile

    from bncourse.authoring import ROOT, STUDENT_ZIP, write_student_notebooks

    written = write_student_notebooks(tmp_path)
    names = set(zipfile.ZipFile(tmp_path / STUDENT_ZIP).namelist())
    assert {f"bncourse-notebooks/{p.name}" for p in written} <= names
    assert [p.name for p in written] == [p.name for p in CHAPTERS]
    for item in (ROOT / "book" / "data").rglob("*"):
        if item.is_file():
            rel = item.relative_to(ROOT / "book" / "data").as_posix()
            assert f"bncourse-notebooks/data/{rel}" in names, f"{rel} is missing from the zip"
