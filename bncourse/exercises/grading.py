"""Grading notebooks: the verdict on every exercise a notebook checks, for an instructor.

``python -m bncourse.exercises grade NOTEBOOK... --json OUT [--csv OUT] [--progress OUT]
[--timeout SECONDS] [--notebook-timeout SECONDS]``

How one notebook is graded:

1. It runs from the top in a fresh kernel (this Python, in the notebook's folder), cell by
   cell: a cell that raises does not stop the cells after it; a cell that runs past
   ``--timeout`` seconds is interrupted and the next one runs; the whole notebook stops at
   ``--notebook-timeout`` seconds. The kernel runs in a process of its own, which is ended
   when the notebook is done, so nothing a notebook does can hang the command.
2. Before the notebook's first cell, the grader's own first cell records every answer the
   notebook passes to the checker's ``check``: it serialises the answer itself (a function
   with the code and values it uses, by ``cloudpickle``; a number or a letter as it is) to a
   file outside the notebook, at the moment of the call.
3. The answers are then judged again, in another new process of the grader's (never in the
   kernel), by the real checker: for a function exercise, the student's function runs on the
   checker's cases there. The latest answer to each exercise counts. What the notebook
   printed is never read: an edited verdict, a ``check`` redefined in the notebook (whose
   calls never reach the recorder, so its exercises are "not attempted") or a patched
   checker inside the kernel gains nothing.

Out of reach, as for any grader that runs the code it grades: a function written to attack
the grading process itself while it is being checked. Grade untrusted notebooks in a
container or a throw-away account.

The exercises listed for a notebook are those of its chapter (a name that starts with the
chapter's number, like ``05_inference.ipynb``), those whose id its code mentions, and those
it checked; one it never checked is "not attempted". Statuses are the checker's:
``"passed"``, ``"failed"`` and ``"not attempted"``.

The JSON maps each notebook's path to ``{"exercises": {id: {"status", "mistake",
"message", "answer"}}, "error": null | text}``: ``error`` says what went wrong in the
notebook (a cell that raised or was interrupted, the time limit, a kernel that died, a
notebook that never calls ``check``), ``answer`` is a number or choice answer as text (None
for a function). The CSV has one row per notebook and one column per exercise.
:func:`to_progress` turns a grading into the progress file that the site's "Your progress"
page imports (:data:`PROGRESS_FORMAT`).
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import EXERCISES
from .core import FAILED, NOT_ATTEMPTED, PASSED

__all__ = ["grade", "grade_notebook", "to_progress", "write_csv", "PROGRESS_FORMAT", "main"]

#: The progress file of the site's "Your progress" page, and of ``grade --progress``:
#: ``{"version": 1, "exercises": {id: {"status", "answer", "updated"}}}`` where ``status`` is
#: one of the three below, ``answer`` the text typed in the page's field (None for a function
#: exercise or when there is none) and ``updated`` an ISO 8601 time in UTC.
PROGRESS_FORMAT = 1
PROGRESS_STATUS = {PASSED: "correct", FAILED: "not yet", NOT_ATTEMPTED: "not attempted"}

DEFAULT_CELL_TIMEOUT = 300.0
DEFAULT_NOTEBOOK_TIMEOUT = 1800.0

_CHECK_CALL = re.compile(r"""["']([a-z_]+\.[a-z0-9_]+)["']""")
_CHAPTER_NAME = re.compile(r"^0*([0-9]+)[_\-. ]")

# The grader's first cell, run in the kernel before the notebook's own cells.
_RECORDER = '''\
def _bncourse_grading_recorder(path):
    import base64, json
    import bncourse.exercises.core as core
    import cloudpickle
    original = core.Exercise.check

    def check(self, answer):
        record = {{"id": self.id}}
        try:
            record["answer"] = base64.b64encode(cloudpickle.dumps(answer)).decode("ascii")
        except Exception as e:
            record["unsaved"] = f"{{type(e).__name__}}: {{e}}"
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\\n")
        return original(self, answer)

    core.Exercise.check = check

_bncourse_grading_recorder({path!r})
del _bncourse_grading_recorder
'''


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= 50 else line[:47] + "..."
    return ""


# --------------------------------------------------------------------------------------
# Running a notebook (in a process of its own)
# --------------------------------------------------------------------------------------


def _kernel_manager(folder: Path):
    """A kernel manager that starts this Python's ipykernel (whatever kernelspecs exist)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec = folder / "kernels" / "bncourse-grading"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "bncourse grading", "language": "python",
        "env": {"MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"},
    }))
    return AsyncKernelManager(kernel_name="bncourse-grading",
                              kernel_spec_manager=KernelSpecManager(
                                  kernel_dirs=[str(spec.parent)]))


def run_notebook(path: Path, answers: Path, cell_timeout: float,
                 notebook_timeout: float) -> list[str]:
    """Run ``path`` with the recorder first; returns what went wrong, in words."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_RECORDER.format(path=str(answers))))
    problems: list[str] = []
    replies: dict[int, dict[str, Any]] = {}

    def on_cell_executed(cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        replies[cell_index] = execute_reply.get("content", {})

    timeout_reply = {"ename": "CellTimeout", "evalue": "interrupted", "traceback": []}
    with tempfile.TemporaryDirectory(prefix="bncourse-kernel-") as folder:
        client = NotebookClient(
            nb, km=_kernel_manager(Path(folder)), timeout=int(math.ceil(cell_timeout)),
            allow_errors=True, interrupt_on_timeout=True, error_on_timeout=timeout_reply,
            record_timing=False, startup_timeout=120, iopub_timeout=2,
            on_cell_executed=on_cell_executed,
            resources={"metadata": {"path": str(path.parent.resolve())}},
        )
        deadline = time.monotonic() + notebook_timeout
        code_number = 0
        with client.setup_kernel(cwd=str(path.parent.resolve())):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                if index == 0:
                    where = "the grader's first cell"
                else:
                    code_number += 1
                    where = f"code cell {code_number} ({_first_line(cell.source)!r})"
                remaining = deadline - time.monotonic()
                if remaining <= 1:
                    problems.append(
                        f"the notebook ran past its time limit of {notebook_timeout:g} s and was "
                        f"stopped before {where}; the answers checked before count")
                    break
                client.timeout = max(1, int(min(cell_timeout, remaining)))
                try:
                    client.execute_cell(cell, index)
                except DeadKernelError:
                    problems.append(f"the kernel died in {where} (out of memory, or the code "
                                    f"ended the process); the answers checked before count")
                    break
                reply = replies.get(index, {})
                if reply.get("ename") == "CellTimeout":
                    problems.append(f"{where} ran past the time limit of {client.timeout} s "
                                    f"and was interrupted")
                elif reply.get("status") == "error" and index == 0:
                    problems.append("the grader could not record answers in this kernel: "
                                    f"{reply.get('ename')}: {reply.get('evalue')}")
                    break
                elif reply.get("status") == "error" and "raises-exception" not in cell.get(
                        "metadata", {}).get("tags", []):  # a cell meant to raise is not a fault
                    problems.append(f"{where} raised {reply.get('ename')}: "
                                    f"{str(reply.get('evalue'))[:200]}")
    return problems


# --------------------------------------------------------------------------------------
# Judging the recorded answers (in another process of its own)
# --------------------------------------------------------------------------------------


def _latest_answers(answers: Path) -> dict[str, dict[str, Any]]:
    """The last recorded answer to each exercise (lines the notebook wrote are skipped)."""
    latest: dict[str, dict[str, Any]] = {}
    if not answers.exists():
        return latest
    for line in answers.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("id") in EXERCISES:
            latest[record["id"]] = record
    return latest


def _answer_text(answer: Any) -> str | None:
    """A number or choice answer as the page's field would hold it; None otherwise."""
    if isinstance(answer, str):
        return answer.strip()[:200]
    try:
        from .core import _as_real

        return repr(_as_real(answer))
    except BaseException:
        return None


def judge_answers(answers: Path, ids: list[str], token: str) -> None:
    """Judge the recorded answers to ``ids`` with the real checker; one line per verdict on
    stdout, marked with ``token``."""
    latest = _latest_answers(answers)
    out = sys.__stdout__
    for eid in ids:
        record = latest[eid]
        exercise = EXERCISES[eid]
        answer_text = None
        if "answer" not in record:
            verdict = {"status": FAILED, "mistake": None, "message": (
                "the grader could not take this answer out of the notebook to check it "
                f"({record.get('unsaved', 'no answer recorded')}); define the function at the "
                "top level of a cell, using only values defined in the notebook")}
        else:
            try:
                import cloudpickle

                answer = cloudpickle.loads(base64.b64decode(record["answer"]))
            except BaseException as e:
                verdict = {"status": FAILED, "mistake": None, "message": (
                    "the grader could not load this answer outside the notebook "
                    f"({type(e).__name__}: {e})")}
            else:
                result = exercise.check(answer)
                verdict = {"status": result.status, "mistake": result.mistake,
                           "message": result.message}
                if exercise.kind != "function":
                    answer_text = _answer_text(answer)
        verdict["answer"] = answer_text
        out.write("\n" + token + json.dumps({"id": eid, **verdict}) + "\n")
        out.flush()


def _judge_in_processes(answers: Path, folder: Path) -> dict[str, dict[str, Any]]:
    """Every recorded answer judged in a new process; an answer that ends that process is
    failed with a message and the others are judged in another."""
    remaining = sorted(_latest_answers(answers), key=list(EXERCISES).index)
    verdicts: dict[str, dict[str, Any]] = {}
    while remaining:
        token = secrets.token_hex(16)
        limit = 60 + sum(getattr(EXERCISES[e], "time_limit", 0) + 10 for e in remaining)
        command = [sys.executable, "-m", "bncourse.exercises.grading", "_judge", str(answers),
                   *remaining]
        output, code = _run_group(command, limit, cwd=folder, stdin=token)
        for line in output.splitlines():
            if line.startswith(token):
                item = json.loads(line[len(token):])
                if item.get("id") in remaining and item["id"] not in verdicts:
                    verdicts[item.pop("id")] = item
        left = [e for e in remaining if e not in verdicts]
        if left:  # answers are judged in order: the first one left stopped the process
            why = ("ran past the grader's time limit" if code is None else
                   f"ended the grader's process (exit status {code})")
            verdicts[left[0]] = {"status": FAILED, "mistake": None, "answer": None,
                                 "message": f"checking this answer {why}"}
            left = left[1:]
        remaining = left
    return verdicts


# --------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------


def exercises_of(path: Path, source: str, checked: list[str]) -> list[str]:
    """The exercises listed for a notebook, in book order: its chapter's (by its name), the
    ids its code mentions, and those it checked."""
    ids = set(checked) | {m for m in _CHECK_CALL.findall(source) if m in EXERCISES}
    chapter = _CHAPTER_NAME.match(path.name)
    if chapter:
        ids |= {e.id for e in EXERCISES.values() if e.chapter == int(chapter.group(1))}
    return [eid for eid in EXERCISES if eid in ids]


def grade_notebook(path: str | Path, cell_timeout: float = DEFAULT_CELL_TIMEOUT,
                   notebook_timeout: float = DEFAULT_NOTEBOOK_TIMEOUT) -> dict[str, Any]:
    """``{"exercises": {id: verdict}, "error": None | text}`` for the notebook at ``path``."""
    path = Path(path)
    try:
        import nbformat

        nb = nbformat.read(path, as_version=4)
    except FileNotFoundError:
        return {"exercises": {}, "error": f"no such file: {path}"}
    except Exception as e:  # not JSON, not a notebook
        return {"exercises": {}, "error": f"not a notebook that can be read ({e})"}
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bncourse-grading-") as work:
        answers = Path(work) / "answers.jsonl"
        answers.touch()
        command = [sys.executable, "-m", "bncourse.exercises.grading", "_run", str(path),
                   str(answers), str(cell_timeout), str(notebook_timeout)]
        output, code = _run_group(command, notebook_timeout + 120)
        report = [line[len("PROBLEM "):] for line in output.splitlines()
                  if line.startswith("PROBLEM ")]
        problems += report
        if code is None:
            problems.append(f"the notebook ran past its time limit of {notebook_timeout:g} s "
                            f"and was stopped; the answers checked before count")
        elif code != 0 and not report:
            problems.append(f"the notebook could not be run (the grader's process ended with "
                            f"exit status {code})")
        verdicts = _judge_in_processes(answers, path.parent.resolve())
    if not verdicts:
        problems.append("the notebook never calls check, so no exercise was checked")
    exercises = {}
    for eid in exercises_of(path, source, list(verdicts)):
        verdict = verdicts.get(eid) or {
            "status": NOT_ATTEMPTED, "mistake": None,
            "message": "the notebook never checks this exercise", "answer": None}
        exercises[eid] = {key: verdict.get(key) for key in ("status", "mistake", "message",
                                                             "answer")}
    return {"exercises": exercises, "error": "; ".join(problems) if problems else None}


def _run_group(command: list[str], timeout: float, cwd: Path | None = None,
               stdin: str = "") -> tuple[str, int | None]:
    """Run ``command`` in a new process group; past ``timeout`` seconds the whole group is
    killed. Returns its stdout and exit status (None when it was killed)."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, cwd=cwd,
                               start_new_session=True)
    try:
        output, _ = process.communicate(stdin, timeout=timeout)
        return output, process.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
        output, _ = process.communicate()
        return output or "", None


def grade(paths: list[str | Path], cell_timeout: float = DEFAULT_CELL_TIMEOUT,
          notebook_timeout: float = DEFAULT_NOTEBOOK_TIMEOUT,
          progress: Any = None) -> dict[str, dict[str, Any]]:
    """Grade every notebook of ``paths``, one after another: ``{path: grade_notebook(path)}``.
    ``progress``, when given, is called with each path before it is graded."""
    if cell_timeout <= 0 or notebook_timeout <= 0:
        raise ValueError("the time limits must be positive numbers of seconds")
    for module in ("cloudpickle", "nbclient", "ipykernel"):
        try:
            __import__(module)
        except ImportError:
            raise RuntimeError(f"grading needs the package {module}, which this Python does not "
                               f"have: pip install {module}") from None
    results = {}
    for path in paths:
        if progress is not None:
            progress(str(path))
        results[str(path)] = grade_notebook(path, cell_timeout, notebook_timeout)
    return results


def write_csv(results: dict[str, dict[str, Any]], out: Path) -> None:
    """One row per notebook, one column per exercise (book order), then counts and error."""
    ids = [eid for eid in EXERCISES
           if any(eid in r["exercises"] for r in results.values())]
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["notebook", *ids, "passed", "exercises", "error"])
        for path, result in results.items():
            statuses = [result["exercises"].get(eid, {}).get("status", "") for eid in ids]
            writer.writerow([path, *statuses, statuses.count(PASSED),
                             len(result["exercises"]), result["error"] or ""])


def to_progress(results: dict[str, dict[str, Any]], updated: str | None = None
                ) -> dict[str, Any]:
    """The progress file (:data:`PROGRESS_FORMAT`) of a grading, for the site's progress
    page. An exercise graded in several notebooks takes the verdict of the last notebook
    that attempted it."""
    updated = updated or _now()
    exercises: dict[str, dict[str, Any]] = {}
    for result in results.values():
        for eid, verdict in result.get("exercises", {}).items():
            status = verdict.get("status")
            if status not in PROGRESS_STATUS:
                raise ValueError(f"exercise {eid}: unknown status {status!r}")
            if status == NOT_ATTEMPTED and eid in exercises:
                continue
            exercises[eid] = {"status": PROGRESS_STATUS[status],
                              "answer": verdict.get("answer"), "updated": updated}
    return {"version": PROGRESS_FORMAT, "exercises": exercises}


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"the time limit must be positive; got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebooks", nargs="+", type=Path, metavar="NOTEBOOK")
    parser.add_argument("--json", type=Path, required=True, metavar="OUT",
                        help="where the verdicts go, as JSON")
    parser.add_argument("--csv", type=Path, metavar="OUT",
                        help="also a table: one row per notebook, one column per exercise")
    parser.add_argument("--progress", type=Path, metavar="OUT",
                        help="also the progress file the site's progress page imports")
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_CELL_TIMEOUT,
                        metavar="SECONDS", help="the time limit of each cell "
                        f"(default {DEFAULT_CELL_TIMEOUT:g})")
    parser.add_argument("--notebook-timeout", type=_seconds, default=DEFAULT_NOTEBOOK_TIMEOUT,
                        metavar="SECONDS", help="the time limit of a whole notebook "
                        f"(default {DEFAULT_NOTEBOOK_TIMEOUT:g})")


def run_command(args: argparse.Namespace) -> int:
    def say(path: str) -> None:
        print(f"grading {path} ...", file=sys.stderr, flush=True)

    try:
        results = grade(args.notebooks, args.timeout, args.notebook_timeout, progress=say)
    except (RuntimeError, ValueError) as e:
        print(f"python -m bncourse.exercises grade: {e}", file=sys.stderr)
        return 2
    args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if args.csv:
        write_csv(results, args.csv)
    if args.progress:
        args.progress.write_text(json.dumps(to_progress(results), indent=1) + "\n",
                                 encoding="utf-8")
    for path, result in results.items():
        counts = [v["status"] for v in result["exercises"].values()]
        line = (f"{path}: {counts.count(PASSED)} passed, {counts.count(FAILED)} failed, "
                f"{counts.count(NOT_ATTEMPTED)} not attempted")
        print(line + (f" ({result['error']})" if result["error"] else ""), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The grader's own processes: ``_run`` (a notebook) and ``_judge`` (its answers)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_run"]:
        path, answers, cell_timeout, notebook_timeout = argv[1:5]
        try:
            problems = run_notebook(Path(path), Path(answers), float(cell_timeout),
                                    float(notebook_timeout))
        except Exception as e:  # a kernel that does not start, a notebook nbclient refuses
            problems = [f"the notebook could not be run ({type(e).__name__}: {e})"]
        for problem in problems:
            print("PROBLEM " + problem.replace("\n", " "), flush=True)
        return 0
    if argv[:1] == ["_judge"]:
        token = sys.stdin.read().strip()
        judge_answers(Path(argv[1]), argv[2:], token)
        return 0
    raise SystemExit("use: python -m bncourse.exercises grade NOTEBOOK... --json OUT")


if __name__ == "__main__":
    raise SystemExit(main())
