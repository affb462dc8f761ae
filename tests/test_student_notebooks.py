"""The student kit: solutions removed, outputs cleared, book markup converted, and a kit that
runs on its own, with every check "not attempted"."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from bncourse.authoring import ROOT, student_notebook, toc_notebooks
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


# ---------------------------------------------------------------- book markup to plain Markdown

NUMBERS = {"eq-a": "2.1", "eq-b": "2.2", "thm-x": "Theorem 2.1", "ex-y": "Exercise 2.3",
           "fig-z": "Figure 2.1", "sec-s": "A section"}


def _bib():
    from pybtex.database import parse_string

    return dict(parse_string("""
@inproceedings{two, author={Ioffe, Sergey and Szegedy, Christian}, title={BN}, year={2015},
  booktitle={ICML}, note={arXiv:1502.03167}}
@inproceedings{many, author={A, B and C, D and E, F}, title={T}, year={2018}, booktitle={V}}
""", "bibtex").entries)


def _plain(text, glue=None, cited=None):
    from bncourse.authoring import plain_markdown

    return plain_markdown(text, NUMBERS, glue or {}, _bib(), cited=cited)


def test_references_become_the_numbers_the_reader_sees():
    text = _plain("By {eq}`eq-a` and {prf:ref}`thm-x`, see {numref}`fig-z` and {ref}`sec-s`.")
    assert text == "By (2.1) and Theorem 2.1, see Figure 2.1 and A section."
    assert _plain("{numref}`Fig. {number} <fig-z>`") == "Fig. 2.1"


def test_labelled_display_math_gets_its_number_as_a_tag_and_targets_go():
    text = _plain("(eq-target)=\n$$\nx = 1\n$$ (eq-b)\n\nafter")
    assert text == "$$\nx = 1\n\\tag{2.2}\n$$\n\nafter"


def test_citations_become_author_year_text_and_are_collected():
    cited = []
    text = _plain("BN {cite}`two,many`; {cite:t}`two` showed it.", cited=cited)
    assert text == "BN (Ioffe and Szegedy 2015; A et al. 2018); Ioffe and Szegedy (2015) showed it."
    assert cited == ["two", "many"]


def test_glued_values_are_pasted_with_their_format():
    glue = {"k": {"text/plain": "0.123456"}, "n": {"text/plain": "7"}}
    assert _plain("spread {glue:text}`k:.2f`, count {glue:}`n`", glue) == "spread 0.12, count 7"


def test_glue_values_are_read_from_scrapbook_outputs():
    from bncourse.authoring import glue_values

    cell = nbformat.v4.new_code_cell("glue('k', 0.5)")
    cell.outputs = [nbformat.v4.new_output(
        "display_data", data={"application/papermill.record/text/plain": "0.5"},
        metadata={"scrapbook": {"name": "k", "mime_prefix": "application/papermill.record/"}})]
    nb = nbformat.v4.new_notebook(cells=[cell])
    assert glue_values(nb) == {"k": {"text/plain": "0.5"}}


def test_exercise_theorem_and_admonition_fences_become_plain_markdown():
    text = _plain("```{exercise} Try it\n:label: ex-y\n\nDo {eq}`eq-a`.\n```\n\n"
                  "```{prf:theorem} Big\n:label: thm-x\n\nTrue.\n```\n\n"
                  "```{prf:proof}\nBecause.\n```\n\n"
                  "```{note}\nCareful.\n```\n\n"
                  "```{solution} ex-y\n:class: dropdown\n\nsecret\n```\n\n"
                  "````{warning}\n```python\n{eq}`not-a-role-in-code`\n```\n````")
    assert text == ("#### Exercise 2.3 (Try it)\n\nDo (2.1).\n\n"
                    "**Theorem 2.1 (Big).** True.\n\n"
                    "*Proof.* Because. ∎\n\n"
                    "> **Note.**\n>\n> Careful.\n\n\n\n"
                    "> **Warning.**\n>\n> ```python\n> {eq}`not-a-role-in-code`\n> ```")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{eq}`eq-missing`", "eq-missing"),
        ("{glue:text}`nothing:.2f`", "nothing"),
        ("{cite}`unknown`", "unknown"),
        ("{weird}`x`", "weird"),
        ("```{mystery}\nx\n```", "mystery"),
        ("```{note}\nnever closed", "never closed"),
    ],
)
def test_markup_that_cannot_be_converted_is_refused_by_name(text, problem):
    with pytest.raises(ValueError, match=problem):
        _plain(text)


# ---------------------------------------------------------------- numbering, as Sphinx numbers


def _book(tmp_path, chapters):
    """A tiny book: _toc.yml with an unnumbered intro and two numbered parts."""
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    names = []
    for name, cells in chapters.items():
        nb = nbformat.v4.new_notebook(cells=cells)
        nbformat.write(nb, tmp_path / "book" / f"{name}.ipynb")
        names.append(name)
    half = len(names) // 2
    toc = ("format: jb-book\nroot: book/intro\nparts:\n"
           "  - caption: One\n    numbered: true\n    chapters:\n"
           + "".join(f"      - file: book/{n}\n" for n in names[:half])
           + "  - caption: Two\n    numbered: true\n    chapters:\n"
           + "".join(f"      - file: book/{n}\n" for n in names[half:]))
    (tmp_path / "_toc.yml").write_text(toc)
    return tmp_path


def test_numbers_run_per_chapter_across_parts_with_one_theorem_sequence(tmp_path):
    from bncourse.authoring import reader_numbers

    fig = nbformat.v4.new_code_cell("plot()")
    fig.metadata["mystnb"] = {"figure": {"name": "fig-p", "caption": "c"}}
    root = _book(tmp_path, {
        "a": [_md("$$x$$ (eq-one)\n\n$$y$$\n\n$$z$$ (eq-two)")],
        "b": [_md("```{prf:theorem} T\n:label: thm-t\n\n$$w$$ (eq-three)\n```\n\n"
                  "```{prf:proposition} P\n:label: prop-p\nx\n```\n\n"
                  "```{prf:definition} D\n:label: def-d\nx\n```"),
              fig,
              _md("```{exercise} E\n:label: ex-e\nx\n```\n\n"
                  "```{exercise} F\n:label: ex-f\n:nonumber:\nx\n```\n\n"
                  "(sec-q)=\n## Questions")],
    })
    assert reader_numbers(root) == {
        "eq-one": "1.1", "eq-two": "1.2", "thm-t": "Theorem 2.1", "eq-three": "2.1",
        "prop-p": "Proposition 2.2", "def-d": "Definition 2.1", "fig-p": "Figure 2.1",
        "ex-e": "Exercise 2.1", "sec-q": "Questions",
    }


# ---------------------------------------------------------------- the kit, run as a student would


def _kit_venv(where: Path) -> Path:
    """A fresh venv holding only the kit's ``bncourse``, installed from the kit's wheel.

    Installing torch and the rest from the network would take minutes, so the venv reads the
    third-party packages from this environment's site-packages through a ``.pth`` line, which
    sys.path lists *after* the venv's own site-packages: ``import bncourse`` finds the kit's
    copy, never the repository's (whose editable hook lives in a .pth file that a plain path
    line does not run).
    """
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig;"
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "course-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _kernel(python: Path, where: Path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = where / "kernels" / "kit"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "student kit", "language": "python"}))
    return KernelManager(kernel_name="kit",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """``make student``'s folder, and its zip unpacked into an empty folder."""
    from bncourse.authoring import STUDENT_ZIP, write_student_kit

    folder = tmp_path_factory.mktemp("student")
    written = write_student_kit(folder)
    unpacked = tmp_path_factory.mktemp("unzipped")
    with zipfile.ZipFile(folder / STUDENT_ZIP) as archive:
        archive.extractall(unpacked)
    return folder, written, unpacked / "bncourse-student-kit"


def test_kit_folder_and_zip_hold_the_same_files(kit):
    folder, written, unpacked = kit
    in_zip = {p.relative_to(unpacked).as_posix(): p.read_bytes()
              for p in unpacked.rglob("*") if p.is_file()}
    in_folder = {p.relative_to(folder).as_posix(): p.read_bytes()
                 for p in folder.rglob("*") if p.is_file() and p.suffix != ".zip"}
    assert in_zip == in_folder
    assert [p.name for p in written] == [p.name for p in CHAPTERS]
    names = set(in_zip)
    wheel = [n for n in names if n.startswith("bncourse-") and n.endswith(".whl")]
    assert len(wheel) == 1, f"the kit holds {wheel} as the bncourse wheel"
    assert {"README.md", "requirements.txt", *(p.name for p in CHAPTERS)} <= names
    for item in (ROOT / "book" / "data").rglob("*"):
        if item.is_file():
            assert f"data/{item.relative_to(ROOT / 'book' / 'data').as_posix()}" in names
    requirements = in_zip["requirements.txt"].decode()
    assert f"./{wheel[0]}" in requirements.splitlines()
    assert "torch==" in requirements
    readme = in_zip["README.md"].decode()
    for command in ("python3 -m venv .venv", ".venv/bin/pip install -r requirements.txt",
                    ".venv/bin/jupyter lab"):
        assert command in readme, f"the kit's README lacks `{command}`"


def test_kit_notebooks_carry_no_book_markup(kit):
    _, written, _ = kit
    markup = re.compile(r"\{[\w:-]+\}`|^[`:~]{3,}\{|\$\$\s*\([\w-]+\)|^\([\w-]+\)=", re.M)
    for path in written:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                found = markup.findall(cell.source)
                assert not found, f"{path.name} still shows book markup {found[:3]}"
            else:
                assert not cell.outputs, f"{path.name} keeps outputs"


@pytest.mark.slow
def test_unzipped_kit_runs_from_its_own_wheel_and_every_check_is_not_attempted(kit, tmp_path):
    _, _, unpacked = kit
    venv = tmp_path / "venv"
    python = _kit_venv(venv)
    wheel = next(unpacked.glob("bncourse-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-index", "--target", subprocess.run(
                        [str(python), "-c", "import sysconfig;"
                         "print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip(),
                    str(wheel)], check=True)
    failures = []
    for path in sorted(unpacked.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell("import bncourse; print(bncourse.__file__)"))
        client = NotebookClient(nb, timeout=600, km=_kernel(python, tmp_path / path.stem),
                                resources={"metadata": {"path": str(unpacked)}})
        client.execute()
        where = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
        if not Path(where).resolve().is_relative_to(venv.resolve()):
            failures.append(f"{path.name} imported bncourse from {where}, not the kit's venv")
        verdicts = _check_verdicts(nb)
        if len(verdicts) < 4 or set(verdicts) != {"Not attempted"}:
            failures.append(f"{path.name}: verdicts {verdicts}")
    assert not failures, "\n".join(failures)
