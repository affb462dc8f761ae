"""The grading command: notebooks run in a fresh kernel, their answers judged again by the
real checker in the grader's own processes, whatever the notebook printed or redefined."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from bncourse.exercises import EXERCISES, FAILED, NOT_ATTEMPTED, PASSED
from bncourse.exercises.grading import grade, grade_notebook, to_progress, write_csv

ROOT = Path(__file__).resolve().parents[1]

IMPORTS = "import numpy as np\nfrom bncourse.exercises import check"
FORWARD = '''\
def forward(x, gamma, beta, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return gamma.reshape(shape) * (x - mean) / np.sqrt(var + eps) + beta.reshape(shape)
'''
# forgets beta: a wrong answer that the catalogue does not name
WRONG_FORWARD = FORWARD.replace(" + beta.reshape(shape)", "")


def notebook(path: Path, *cells: str, outputs: dict[int, str] | None = None,
             tags: dict[int, list[str]] | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    for index, names in (tags or {}).items():
        nb.cells[index].metadata["tags"] = names
    for index, text in (outputs or {}).items():
        nb.cells[index].outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    nbformat.write(nb, path)
    return path


def chapter_ids(chapter: int) -> list[str]:
    return [e.id for e in EXERCISES.values() if e.chapter == chapter]


def test_answers_are_judged_again_and_cells_after_an_error_still_run(tmp_path):
    conv_axes = EXERCISES["formula.conv_axes"]
    path = notebook(
        tmp_path / "01_mine.ipynb", IMPORTS,
        FORWARD + 'check("formula.forward", forward)',
        "1 / 0",
        'check("formula.hand_computed", 12345.0)',
        f'check("formula.conv_axes", {conv_axes.answer.upper()!r})',
        'raise RuntimeError("shown on purpose")',
        tags={5: ["raises-exception"]},  # a cell the author meant to raise is no fault
    )
    result = grade_notebook(path, cell_timeout=60)
    verdicts = result["exercises"]
    assert list(verdicts) == chapter_ids(1)  # the chapter's exercises, by the file's name
    assert verdicts["formula.forward"]["status"] == PASSED
    assert verdicts["formula.forward"]["answer"] is None
    wrong = verdicts["formula.hand_computed"]
    assert wrong["status"] == FAILED and "12345 is not the expected value" in wrong["message"]
    assert wrong["answer"] == "12345.0"
    assert verdicts["formula.conv_axes"]["status"] == PASSED  # after the failing cell
    for eid in set(chapter_ids(1)) - {"formula.forward", "formula.hand_computed",
                                      "formula.conv_axes"}:
        assert verdicts[eid] == {"status": NOT_ATTEMPTED, "mistake": None, "answer": None,
                                 "message": "the notebook never checks this exercise"}
    assert result["error"] == "code cell 3 ('1 / 0') raised ZeroDivisionError: division by zero"


def test_an_edited_verdict_a_patched_checker_or_a_redefined_check_gains_nothing(tmp_path):
    path = notebook(
        tmp_path / "work.ipynb", IMPORTS,
        # the stored output claims a pass for a wrong function
        WRONG_FORWARD + 'check("formula.forward", forward)',
        # the checker is patched inside the kernel to pass everything
        "import bncourse.exercises.core as core\n"
        "core.Exercise._judge = lambda self, answer: None\n"
        'print(check("formula.identity", lambda *args: 0))',
        # a check of one's own
        'def check(exercise_id, answer):\n    print(f"✔ {exercise_id}: Correct.")\n'
        'check("parameters.running_stats", None)',
        outputs={1: "✔ formula.forward: Correct. Your answer matches the reference.\n"},
    )
    result = grade_notebook(path, cell_timeout=60)
    verdicts = result["exercises"]
    assert verdicts["formula.forward"]["status"] == FAILED
    assert verdicts["formula.identity"]["status"] == FAILED  # judged outside the kernel
    assert verdicts["parameters.running_stats"]["status"] == NOT_ATTEMPTED  # listed by its id
    assert result["error"] is None


def test_a_cell_that_loops_is_interrupted_and_the_next_cells_run(tmp_path):
    path = notebook(tmp_path / "loop.ipynb", IMPORTS, "while True:\n    pass",
                    FORWARD + 'check("formula.forward", forward)')
    start = time.monotonic()
    result = grade_notebook(path, cell_timeout=2)
    assert time.monotonic() - start < 60
    assert result["exercises"]["formula.forward"]["status"] == PASSED
    assert "code cell 2 ('while True:') ran past the time limit of 2 s" in result["error"]


def test_a_notebook_that_will_not_stop_is_stopped_at_its_time_limit(tmp_path):
    path = notebook(
        tmp_path / "stubborn.ipynb", IMPORTS,
        FORWARD + 'check("formula.forward", forward)',
        "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n"
        "    except KeyboardInterrupt:\n        pass",
        *["x = 1"] * 6,  # each waits behind the loop, and times out in turn
        'check("formula.hand_computed", 1.0)',
    )
    start = time.monotonic()
    result = grade_notebook(path, cell_timeout=2, notebook_timeout=10)
    assert time.monotonic() - start < 90
    assert result["exercises"]["formula.forward"]["status"] == PASSED  # checked before
    assert "formula.hand_computed" in result["exercises"]  # mentioned, so listed...
    assert result["exercises"]["formula.hand_computed"]["status"] == NOT_ATTEMPTED  # ...unrun
    assert "the notebook ran past its time limit of 10 s and was stopped" in result["error"]


def test_a_notebook_that_never_calls_check_is_reported(tmp_path):
    result = grade_notebook(notebook(tmp_path / "empty.ipynb", "x = 1"), cell_timeout=30)
    assert result == {"exercises": {},
                      "error": "the notebook never calls check, so no exercise was checked"}


def test_an_answer_that_ends_the_checker_fails_alone_and_a_dead_kernel_is_reported(tmp_path):
    path = notebook(
        tmp_path / "exit.ipynb", IMPORTS,
        FORWARD + 'check("formula.forward", forward)',
        # ends the process that checks it, outside the notebook's kernel only
        "import builtins, os\ndef identity(*args):\n"
        "    if not hasattr(builtins, 'get_ipython'):\n        os._exit(3)\n"
        "    return args[0]\n"
        'check("formula.identity", identity)',
        "os._exit(1)",
        'check("formula.hand_computed", 1.0)',
    )
    result = grade_notebook(path, cell_timeout=60)
    verdicts = result["exercises"]
    assert verdicts["formula.forward"]["status"] == PASSED
    assert verdicts["formula.identity"]["status"] == FAILED
    assert "ended the grader's process (exit status 3)" in verdicts["formula.identity"]["message"]
    assert verdicts["formula.hand_computed"]["status"] == NOT_ATTEMPTED
    assert result["error"].startswith("the kernel died in code cell 4 ('os._exit(1)')")


def test_a_missing_or_broken_notebook_is_reported(tmp_path):
    (tmp_path / "broken.ipynb").write_text("{not json")
    results = grade([tmp_path / "missing.ipynb", tmp_path / "broken.ipynb"])
    assert results[str(tmp_path / "missing.ipynb")] == {
        "exercises": {}, "error": f"no such file: {tmp_path / 'missing.ipynb'}"}
    assert results[str(tmp_path / "broken.ipynb")]["error"].startswith("not a notebook")
    with pytest.raises(ValueError, match="positive"):
        grade([tmp_path / "missing.ipynb"], cell_timeout=0)


def _results():
    def verdict(status, answer=None):
        return {"status": status, "mistake": None, "message": "m", "answer": answer}

    return {
        "a/01.ipynb": {"exercises": {"formula.forward": verdict(PASSED),
                                     "formula.hand_computed": verdict(FAILED, "6.5")},
                       "error": None},
        "b/01.ipynb": {"exercises": {"formula.forward": verdict(NOT_ATTEMPTED),
                                     "gradients.backward": verdict(PASSED)},
                       "error": "code cell 2 ('x') raised NameError: name 'y' is not defined"},
    }


def test_the_csv_has_a_row_per_notebook_and_a_column_per_exercise(tmp_path):
    write_csv(_results(), tmp_path / "grades.csv")
    with open(tmp_path / "grades.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["notebook", "formula.forward", "formula.hand_computed",
                       "gradients.backward", "passed", "exercises", "error"]
    assert rows[1] == ["a/01.ipynb", PASSED, FAILED, "", "1", "2", ""]
    assert rows[2][:6] == ["b/01.ipynb", NOT_ATTEMPTED, "", PASSED, "1", "2"]
    assert rows[2][6].startswith("code cell 2")


def test_a_grading_becomes_the_progress_file_of_the_site():
    progress = to_progress(_results(), updated="2026-01-02T03:04:05Z")
    assert progress == {"version": 1, "exercises": {
        # a later "not attempted" does not undo an earlier verdict
        "formula.forward": {"status": "correct", "answer": None,
                            "updated": "2026-01-02T03:04:05Z"},
        "formula.hand_computed": {"status": "not yet", "answer": "6.5",
                                  "updated": "2026-01-02T03:04:05Z"},
        "gradients.backward": {"status": "correct", "answer": None,
                               "updated": "2026-01-02T03:04:05Z"},
    }}
    stamp = to_progress(_results())["exercises"]["formula.forward"]["updated"]
    assert len(stamp) == 20 and stamp.endswith("Z") and stamp[10] == "T"


def test_the_command_writes_json_csv_and_progress(tmp_path):
    path = notebook(tmp_path / "one.ipynb", IMPORTS, 'check("formula.hand_computed", 3.0)')
    out = tmp_path / "grades.json"
    done = subprocess.run(
        [sys.executable, "-m", "bncourse.exercises", "grade", str(path), "--json", str(out),
         "--csv", str(tmp_path / "grades.csv"), "--progress", str(tmp_path / "progress.json"),
         "--timeout", "60"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert list(results) == [str(path)]
    assert list(results[str(path)]["exercises"]) == ["formula.hand_computed"]
    assert results[str(path)]["exercises"]["formula.hand_computed"]["status"] == FAILED
    assert (tmp_path / "grades.csv").read_text().splitlines()[1].startswith(
        f"{path},{FAILED},0,1,")
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["exercises"]["formula.hand_computed"]["status"] == "not yet"
    assert f"{path}: 0 passed, 1 failed, 0 not attempted" in done.stderr
    # the progress file again, from the JSON, and a refused time limit
    again = tmp_path / "again.json"
    subprocess.run([sys.executable, "-m", "bncourse.exercises", "progress", str(out),
                    "--out", str(again)], check=True, timeout=120)
    def undated(exercises):
        return {eid: {**entry, "updated": None} for eid, entry in exercises.items()}

    assert undated(json.loads(again.read_text())["exercises"]) == undated(progress["exercises"])
    refused = subprocess.run([sys.executable, "-m", "bncourse.exercises", "grade", str(path),
                              "--json", str(out), "--timeout", "0"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "the time limit must be positive" in refused.stderr


@pytest.mark.slow
def test_a_chapter_passes_every_exercise_and_its_kit_notebook_attempts_none(tmp_path):
    import shutil

    from bncourse.authoring import student_notebook

    # The kit's notebook of the chapter, as `make student` writes its code cells (its
    # Markdown conversion leaves code alone), beside a copy of the kit's data folder.
    chapter = ROOT / "book" / "01_transform.ipynb"
    kit = tmp_path / "kit" / chapter.name
    shutil.copytree(ROOT / "book" / "data", kit.parent / "data")
    nbformat.write(nbformat.from_dict(student_notebook(nbformat.read(chapter, as_version=4))),
                   kit)
    results = grade([chapter, kit], cell_timeout=300)
    ids = chapter_ids(1)
    book, student = results[str(chapter)], results[str(kit)]
    assert list(book["exercises"]) == ids and list(student["exercises"]) == ids
    assert {eid: v["status"] for eid, v in book["exercises"].items()} == dict.fromkeys(
        ids, PASSED), book
    assert book["error"] is None
    assert {eid: v["status"] for eid, v in student["exercises"].items()} == dict.fromkeys(
        ids, NOT_ATTEMPTED), student
