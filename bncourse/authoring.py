"""Tools for the people who write and maintain the course (``python -m bncourse.authoring``).

* ``notebooks``: the chapter notebooks listed in ``_toc.yml``, in book order.
* ``execute NB...``: re-execute notebooks in place, so their stored outputs are current.
* ``student DIR``: write the student version of every chapter into DIR (solution blocks
  removed, outputs cleared) and a zip of them, which the intro page links to.

The exercise convention these tools rely on: a solution is a gated sphinx-exercise block,
a markdown cell opening ```` ```{solution-start} <label> ```` , the solution's code cells,
and a markdown cell ```` ```{solution-end} ```` . Everything from the opening cell to the
closing cell, inclusive, is removed from the student notebook.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["toc_notebooks", "student_notebook", "write_student_notebooks", "execute_notebook"]

ROOT = Path(__file__).resolve().parent.parent
STUDENT_ZIP = "bncourse-student-notebooks.zip"
_START = re.compile(r"```\{solution-start\}")
_END = re.compile(r"```\{solution-end\}")


def _toc_files(entries: list[dict[str, Any]]) -> list[str]:
    files: list[str] = []
    for entry in entries:
        if "file" in entry:
            files.append(entry["file"])
        for key in ("parts", "chapters", "sections"):
            files.extend(_toc_files(entry.get(key, [])))
    return files


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """Every ``.ipynb`` listed in ``root/_toc.yml``, in the order of the book."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"], *_toc_files(toc.get("parts", []) + toc.get("chapters", []))]
    notebooks = []
    for name in files:
        path = root / name
        if path.suffix != ".ipynb":
            path = path.with_suffix(".ipynb")
        if path.exists():
            notebooks.append(path)
    return notebooks


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def student_notebook(nb: dict[str, Any]) -> dict[str, Any]:
    """The student version of a chapter: solution blocks removed, outputs cleared.

    Raises ``ValueError`` for a solution block that is opened and never closed (or closed
    without being opened), so a broken chapter cannot leak its solutions.
    """
    nb = copy.deepcopy(nb)
    cells = []
    inside = False
    for cell in nb["cells"]:
        text = _source(cell) if cell.get("cell_type") == "markdown" else ""
        if _START.search(text):
            if inside:
                raise ValueError("a solution-start block opens inside another solution block")
            inside = True
        if not inside:
            if cell.get("cell_type") == "code":
                cell["outputs"] = []
                cell["execution_count"] = None
            cells.append(cell)
        if _END.search(text):
            if not inside:
                raise ValueError("a solution-end block closes a solution that was never opened")
            inside = False
    if inside:
        raise ValueError("a solution-start block is never closed by solution-end")
    nb["cells"] = cells
    return nb


def write_student_notebooks(out_dir: Path, root: Path = ROOT) -> list[Path]:
    """Write ``out_dir/<chapter>.ipynb`` for every chapter and a zip of them all.

    The zip also carries ``book/data/`` (tables the chapters read, such as the benchmark),
    laid out as the chapters expect it, beside the notebooks.
    """
    import nbformat

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in toc_notebooks(root):
        nb = nbformat.read(path, as_version=4)
        student = nbformat.from_dict(student_notebook(nb))
        target = out_dir / path.name
        nbformat.write(student, target)
        written.append(target)
    with zipfile.ZipFile(out_dir / STUDENT_ZIP, "w", zipfile.ZIP_DEFLATED) as archive:
        for target in written:
            archive.write(target, arcname=f"bncourse-notebooks/{target.name}")
        data_dir = root / "book" / "data"
        if data_dir.is_dir():
            for item in sorted(data_dir.rglob("*")):
                if item.is_file():
                    arcname = f"bncourse-notebooks/data/{item.relative_to(data_dir).as_posix()}"
                    archive.write(item, arcname=arcname)
    return written


def execute_notebook(path: Path, timeout: int = 600) -> float:
    """Execute ``path`` in place with the current environment's kernel; returns seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    elapsed = time.perf_counter() - start
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bncourse.authoring", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("notebooks", help="list the chapter notebooks of _toc.yml")
    ex = sub.add_parser("execute", help="re-execute notebooks in place")
    ex.add_argument("notebooks", nargs="*", type=Path)
    st = sub.add_parser("student", help="write the student notebooks and their zip")
    st.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)

    if args.command == "notebooks":
        print(" ".join(str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)
                       for p in toc_notebooks()))
    elif args.command == "execute":
        for path in args.notebooks or toc_notebooks():
            print(f"executing {path} ...", flush=True)
            print(f"  done in {execute_notebook(path):.1f} s", flush=True)
    elif args.command == "student":
        written = write_student_notebooks(args.out_dir)
        print(f"wrote {len(written)} student notebooks and {args.out_dir / STUDENT_ZIP}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
