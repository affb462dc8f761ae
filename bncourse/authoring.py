"""Tools for the people who write and maintain the course (``python -m bncourse.authoring``).

* ``notebooks``: the chapter notebooks listed in ``_toc.yml``, in book order.
* ``execute NB...``: re-execute notebooks in place, so their stored outputs are current.
* ``student DIR``: write the student kit into DIR: every chapter as a plain Jupyter notebook
  (solution blocks removed, outputs cleared, book-only markup converted, see
  :func:`plain_markdown`), the data files the chapters read, the ``bncourse`` wheel, a
  requirements file and a README; and the same kit zipped (``bncourse-student-kit.zip``),
  which the intro page links to.
* ``colab-cell``: give every chapter the first cell that installs ``bncourse`` from the
  course's repository where it is missing (Colab, Binder), for the ``repository.url`` of
  ``_config.yml``.

The exercise convention these tools rely on: a solution is a gated sphinx-exercise block,
a markdown cell opening ```` ```{solution-start} <label> ```` , the solution's code cells,
and a markdown cell ```` ```{solution-end} ```` . Everything from the opening cell to the
closing cell, inclusive, is removed from the student notebook.

The numbers in the student notebooks (equations "(1.1)", "Theorem 4.1", "Exercise 1.2",
"Figure 2.1") are computed from the notebooks in the order Sphinx numbers them: chapters
are numbered in ``_toc.yml`` order across parts (``use_multitoc_numbering``), and within a
chapter each kind is counted in document order (propositions, lemmas and corollaries share
the theorems' sequence, as ``prf_realtyp_to_countertyp`` in ``_config.yml`` says). The
browser test compares them with the numbers the built site shows.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

__all__ = [
    "toc_notebooks", "student_notebook", "write_student_notebooks", "execute_notebook",
    "reader_numbers", "plain_markdown", "glue_values", "colab_cell", "add_colab_cell",
    "write_student_kit",
]

ROOT = Path(__file__).resolve().parent.parent
STUDENT_ZIP = "bncourse-student-kit.zip"
KIT_DIR = "bncourse-student-kit"
COLAB_CELL_ID = "install-bncourse"
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


# ---------------------------------------------------------------- the numbers a reader sees

# Theorem-like statements that share the theorems' counter (``prf_realtyp_to_countertyp``).
THEOREM_LIKE = {"theorem", "proposition", "lemma", "corollary", "conjecture"}
_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,}|:{3,})(?P<info>.*)$")
_DIRECTIVE = re.compile(r"^\{(?P<name>[\w:-]+)\}[ \t]*(?P<arg>.*)$")
_OPTION = re.compile(r"^[ \t]*:(?P<key>[\w-]+):[ \t]*(?P<value>.*)$")
_TARGET = re.compile(r"^\((?P<label>[\w:.-]+)\)=[ \t]*$")
_LABELLED_MATH = re.compile(r"\$\$(?P<body>(?:(?!\$\$).)+?)\$\$[ \t]*\((?P<label>[\w:.-]+)\)",
                            re.DOTALL)
_ROLE = re.compile(r"\{(?P<role>[\w:-]+)\}`(?P<content>[^`]*)`")


def _numbered_chapters(root: Path) -> dict[str, int]:
    """``{"01_transform": 1, ...}``: the chapter number of every numbered notebook.

    Numbering runs across the numbered parts of ``_toc.yml`` in order, as
    ``use_multitoc_numbering`` does.
    """
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    numbers: dict[str, int] = {}
    for part in toc.get("parts", []):
        if not part.get("numbered"):
            continue
        for entry in part.get("chapters", []):
            if "file" in entry:
                numbers[Path(entry["file"]).stem] = len(numbers) + 1
    return numbers


def _blocks(lines: list[str], start: int = 0, close: str | None = None):
    """Parse fenced blocks: a list of text lines and ``(fence, info, children)`` tuples.

    Returns ``(items, next_index)``. A block closes at a line holding only its fence
    character, at least as many times as it was opened (CommonMark/MyST rules).
    """
    items: list[Any] = []
    i = start
    while i < len(lines):
        line = lines[i]
        if close is not None:
            stripped = line.strip()
            if stripped and set(stripped) == {close[0]} and len(stripped) >= len(close):
                return items, i + 1
        match = _OPEN.match(line)
        if match and not (match.group("fence")[0] == "`" and "`" in match.group("info")):
            children, i = _blocks(lines, i + 1, match.group("fence"))
            items.append((match.group("fence"), match.group("info").strip(), children))
            continue
        items.append(line)
        i += 1
    if close is not None:
        raise ValueError(f"a fenced block opened with {close!r} is never closed")
    return items, i


def _directive(fence_info: str) -> tuple[str, str] | None:
    match = _DIRECTIVE.match(fence_info)
    return (match.group("name"), match.group("arg").strip()) if match else None


def _split_options(children: list[Any]) -> tuple[dict[str, str], list[Any]]:
    options: dict[str, str] = {}
    i = 0
    while i < len(children) and isinstance(children[i], str):
        match = _OPTION.match(children[i])
        if not match:
            break
        options[match.group("key")] = match.group("value").strip()
        i += 1
    return options, children[i:]


def _walk_directives(items: list[Any]):
    """Every ``(name, arg, options, body)`` directive in document order, nested ones too."""
    for item in items:
        if isinstance(item, tuple):
            fence, info, children = item
            found = _directive(info)
            if found:
                options, body = _split_options(children)
                yield found[0], found[1], options, body
                yield from _walk_directives(body)


def _text_of(items: list[Any]) -> str:
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        else:
            out.append(_text_of(item[2]))
    return "\n".join(out)


def reader_numbers(root: Path = ROOT) -> dict[str, str]:
    """What the reader sees for each label, computed from the notebooks as Sphinx numbers them.

    Equations map to their number ("1.1", shown as "(1.1)"); theorem-like statements,
    exercises and figures to their word and number ("Theorem 4.1", "Exercise 1.2",
    "Figure 2.1"); labelled sections (``(label)=`` before a heading) to their title.
    """
    import nbformat

    chapters = _numbered_chapters(root)
    numbers: dict[str, str] = {}
    for path in toc_notebooks(root):
        chapter = chapters.get(path.stem)
        nb = nbformat.read(path, as_version=4)
        counters: dict[str, int] = {}

        def count(kind: str, counters: dict[str, int] = counters, chapter=chapter) -> str:
            counters[kind] = counters.get(kind, 0) + 1
            return f"{chapter}.{counters[kind]}"

        pending_target = None
        for cell in nb.cells:
            source = _source(cell)
            if cell.cell_type == "code":
                figure = cell.get("metadata", {}).get("mystnb", {}).get("figure", {})
                if figure.get("name") and chapter:
                    numbers[figure["name"]] = f"Figure {count('figure')}"
                continue
            if cell.cell_type != "markdown":
                continue
            items, _ = _blocks(source.splitlines())
            # Labelled equations, labelled statements, exercises and figures, in order.
            events: list[tuple[int, str, str]] = []
            flat = source
            for match in _LABELLED_MATH.finditer(flat):
                events.append((match.start(), "equation", match.group("label")))
            for name, _arg, options, _body in _walk_directives(items):
                label = options.get("label") or options.get("name")
                position = flat.find(f"{{{name}}}")
                if name == "math" and label:
                    events.append((position, "equation", label))
                elif name.startswith("prf:") and name != "prf:proof" and label:
                    realtype = name.split(":", 1)[1]
                    if "nonumber" not in options:
                        events.append((position, f"prf:{realtype}", label))
                elif name in ("exercise", "exercise-start") and label:
                    if "nonumber" not in options:
                        events.append((position, "exercise", label))
                elif name in ("figure", "glue:figure") and label:
                    events.append((position, "figure", label))
            if chapter:
                for _pos, kind, label in sorted(events, key=lambda event: event[0]):
                    if kind == "equation":
                        numbers[label] = count("equation")
                    elif kind.startswith("prf:"):
                        realtype = kind.split(":", 1)[1]
                        counter = "theorem" if realtype in THEOREM_LIKE else realtype
                        numbers[label] = f"{realtype.title()} {count(counter)}"
                    elif kind == "exercise":
                        numbers[label] = f"Exercise {count('exercise')}"
                    else:
                        numbers[label] = f"Figure {count('figure')}"
            for line in source.splitlines():
                target = _TARGET.match(line.strip())
                if target:
                    pending_target = target.group("label")
                    continue
                heading = re.match(r"^#{1,6}\s+(.*)$", line)
                if heading and pending_target:
                    numbers.setdefault(pending_target, heading.group(1).strip())
                if line.strip():
                    pending_target = None
    return numbers


# ---------------------------------------------------------------- citations and glue


def author_year(entry) -> str:
    """``"Ioffe and Szegedy 2015"``: a pybtex entry's authors (or editors) and year."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [" ".join(p.prelast_names + p.last_names).replace("{", "").replace("}", "")
             for p in people]
    if not names:
        who = entry.fields.get("organization") or entry.key
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who} {entry.fields.get('year', 'n.d.')}"


def _bibliography(root: Path) -> dict[str, Any]:
    from pybtex.database import parse_file

    return dict(parse_file(str(root / "book" / "references.bib")).entries)


def _plain_tex(text: str) -> str:
    text = re.sub(r"\\url\s*\{([^}]*)\}", r"\1", str(text))
    return text.replace("{", "").replace("}", "").replace("--", "–").strip()


def reference_entry(entry) -> str:
    """One entry of a student notebook's reference list, in Markdown."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_plain_tex(" ".join(p.first_names + p.middle_names + p.prelast_names
                                 + p.last_names)) for p in people]
    authors = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1] \
        if names else entry.key
    fields = entry.fields
    parts = [f"**{author_year(entry)}.** {authors}.", f"*{_plain_tex(fields.get('title', ''))}*."]
    venue = fields.get("booktitle") or fields.get("journal") or fields.get("howpublished")
    if venue:
        parts.append(f"{_plain_tex(venue)}.")
    note = str(fields.get("note", ""))
    arxiv = re.match(r"^\s*arXiv:\s*(\S+?)\.?\s*$", note, re.IGNORECASE)
    if arxiv:
        parts.append(f"[arXiv:{arxiv.group(1)}](https://arxiv.org/abs/{arxiv.group(1)}).")
    elif note:
        parts.append(f"{_plain_tex(note)}.")
    for field in ("howpublished", "note"):
        url = re.search(r"\\url\s*\{([^}]*)\}", str(fields.get(field, "")))
        if url:
            parts.append(f"<{url.group(1)}>")
    if fields.get("url"):
        parts.append(f"<{fields['url']}>")
    return " ".join(parts)


def glue_values(nb: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: mime bundle}`` of every value a notebook glued (MyST-NB, in its outputs)."""
    values: dict[str, dict[str, Any]] = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) or []:
            scrap = (output.get("metadata") or {}).get("scrapbook")
            if not scrap or "name" not in scrap:
                continue
            prefix = scrap.get("mime_prefix", "")
            values[scrap["name"]] = {
                key[len(prefix):] if prefix and key.startswith(prefix) else key: value
                for key, value in (output.get("data") or {}).items()
            }
    return values


def format_plain_text(text: str, spec: str) -> str:
    """A glued ``text/plain`` value with a format spec, exactly as MyST-NB's ``glue:text``."""
    try:
        value: Any = ast.literal_eval(text)
    except (SyntaxError, ValueError):
        value = text
    if spec == "":
        return str(value)
    kind = spec[-1]
    if kind == "s":
        value = str(value)
    elif kind in "bcdoxX":
        value = int(value)
    elif kind in "eEfFgGn%":
        value = float(value)
    return format(value, spec)


# ---------------------------------------------------------------- book markup to plain Markdown

_ADMONITIONS = {"note", "warning", "tip", "important", "hint", "caution", "attention", "danger",
                "error", "seealso", "admonition", "margin", "sidebar", "dropdown", "topic"}
_PLAIN_ROLES = {"math", "term", "abbr", "sup", "sub", "code", "kbd", "guilabel", "samp",
                "file", "program", "command", "download", "doc", "ref", "numref", "eq",
                "prf:ref"}


class _Converter:
    def __init__(self, numbers: dict[str, str], glue: dict[str, dict[str, Any]],
                 bibliography: dict[str, Any] | None, where: str) -> None:
        self.numbers = numbers
        self.glue = glue
        self.bibliography = bibliography
        self.where = where
        self.cited: list[str] = []

    # -- inline
    def _number(self, label: str, role: str) -> str:
        if label not in self.numbers:
            raise ValueError(f"{self.where}: {{{role}}} refers to {label!r}, which has no number "
                             "(no such label in the book)")
        return self.numbers[label]

    def _cite(self, keys: str, textual: bool) -> str:
        if self.bibliography is None:
            raise ValueError(f"{self.where}: a citation needs book/references.bib")
        texts = []
        for key in (k.strip() for k in keys.split(",")):
            if key not in self.bibliography:
                raise ValueError(f"{self.where}: {{cite}} names {key!r}, not in references.bib")
            if key not in self.cited:
                self.cited.append(key)
            who, year = author_year(self.bibliography[key]).rsplit(" ", 1)
            texts.append(f"{who} ({year})" if textual else f"{who} {year}")
        return "; ".join(texts) if textual else "(" + "; ".join(texts) + ")"

    def _glue(self, role: str, content: str) -> str:
        key, spec = (content.rsplit(":", 1) + [""])[:2] if role == "glue:text" else (content, "")
        key = key.split("::")[-1]
        if key not in self.glue:
            raise ValueError(f"{self.where}: {{{role}}} pastes {key!r}, which no cell of the "
                             "executed notebook glued")
        data = self.glue[key]
        if role == "glue:md" and "text/markdown" in data:
            return "".join(data["text/markdown"])
        text = "".join(data.get("text/plain", ""))
        return format_plain_text(text, spec) if role == "glue:text" else format_plain_text(text, "")

    def role(self, match: re.Match) -> str:
        role, content = match.group("role"), match.group("content")
        explicit = re.match(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>$", content, re.DOTALL)
        text, target = (explicit.group("text"), explicit.group("target")) if explicit else (
            None, content.strip())
        if role == "eq":
            return f"({self._number(target, role)})"
        if role in ("numref", "prf:ref", "ref"):
            number = self._number(target, role)
            if text:
                digits = number.split(" ")[-1]
                return text.replace("{number}", digits).replace("%s", digits).replace(
                    "{name}", number)
            return number
        if role.startswith("cite"):
            return self._cite(content, textual=role in ("cite:t", "cite:ts", "cite:ct"))
        if role.startswith("glue"):
            return self._glue(role, content)
        if role == "math":
            return f"${content}$"
        if role in ("code", "kbd", "samp", "file", "program", "command"):
            return f"`{content}`"
        if role in _PLAIN_ROLES:
            return text or target
        raise ValueError(f"{self.where}: the role {{{role}}} has no plain-Markdown form "
                         "(bncourse.authoring.plain_markdown)")

    def inline(self, text: str) -> str:
        def tag(match: re.Match) -> str:
            label = match.group("label")
            return f"$${match.group('body').rstrip()}\n\\tag{{{self._number(label, 'eq')}}}\n$$"

        text = _LABELLED_MATH.sub(tag, text)
        lines = [line for line in text.split("\n") if not _TARGET.match(line.strip())]
        return _ROLE.sub(self.role, "\n".join(lines))

    # -- blocks
    def render(self, items: list[Any]) -> str:
        out: list[str] = []
        run: list[str] = []
        for item in items:
            if isinstance(item, str):
                run.append(item)
                continue
            if run:
                out.append(self.inline("\n".join(run)))
                run = []
            out.append(self.block(*item))
        if run:
            out.append(self.inline("\n".join(run)))
        return "\n".join(out)

    def block(self, fence: str, info: str, children: list[Any]) -> str:
        found = _directive(info)
        if not found:  # a plain code block: left exactly as written
            return "\n".join([fence + info, _text_of(children), fence])
        name, arg = found
        options, body = _split_options(children)
        inner = self.render(body).strip("\n")
        label = options.get("label") or options.get("name")
        title = self.inline(arg) if arg else ""
        if name in ("exercise", "exercise-start"):
            number = self.numbers.get(label, "Exercise") if "nonumber" not in options else (
                "Exercise")
            heading = f"#### {number}" + (f" ({title})" if title else "")
            return f"{heading}\n\n{inner}" if inner else heading
        if name in ("exercise-end", "solution", "solution-start", "solution-end",
                    "bibliography", "toctree", "tableofcontents"):
            return ""
        if name == "prf:proof":
            return f"*Proof.* {inner} ∎"
        if name.startswith("prf:"):
            word = name.split(":", 1)[1].title()
            number = self.numbers.get(label, word) if label and "nonumber" not in options \
                else word
            lead = f"**{number}" + (f" ({title})" if title else "") + ".**"
            return f"{lead} {inner}"
        if name == "math":
            tag = f"\n\\tag{{{self._number(label, 'eq')}}}" if label else ""
            return f"$$\n{inner}{tag}\n$$"
        if name in _ADMONITIONS:
            word = title if name in ("admonition", "dropdown", "topic", "sidebar") and title \
                else name.title()
            quoted = "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))
            return f"> **{word}.**\n>\n{quoted}"
        if name in ("code-block", "code", "sourcecode"):
            return f"```{arg}\n{_text_of(body)}\n```"
        if name in ("figure", "image"):
            alt = options.get("alt", title or "figure")
            caption = f"\n\n*{inner}*" if inner else ""
            return f"![{alt}]({arg}){caption}"
        raise ValueError(f"{self.where}: the directive {{{name}}} has no plain-Markdown form "
                         "(bncourse.authoring.plain_markdown)")


def plain_markdown(text: str, numbers: dict[str, str],
                   glue: dict[str, dict[str, Any]] | None = None,
                   bibliography: dict[str, Any] | None = None, where: str = "markdown",
                   cited: list[str] | None = None) -> str:
    """Book markup turned into Markdown that plain Jupyter renders.

    * ``{eq}`label``` becomes "(1.1)"; ``{prf:ref}``, ``{numref}`` and ``{ref}`` become
      "Theorem 4.1", "Figure 2.1" or the section's title; labelled display math
      ``$$ ... $$ (label)`` gets its number as ``\\tag{1.1}``; ``(label)=`` targets go.
    * ``{cite}`key``` becomes "(Ioffe and Szegedy 2015)", ``{cite:t}`` "Ioffe and Szegedy
      (2015)"; the keys cited are appended to ``cited`` (for the reference list).
    * ``{glue:text}`key:fmt``` becomes the glued value, formatted as MyST-NB formats it.
    * Exercise fences become "#### Exercise 1.2 (title)" headings; theorem-like fences a bold
      "**Theorem 4.1 (title).**" lead; admonitions block quotes; solutions are dropped.

    Raises ``ValueError`` naming the problem for a label without a number, a glue key that
    was never glued, a citation key not in the bibliography, or a role or directive this
    conversion does not know (so nothing reaches a student as raw book markup).
    """
    converter = _Converter(numbers, glue or {}, bibliography, where)
    items, _ = _blocks(text.split("\n"))
    result = converter.render(items)
    if cited is not None:
        cited.extend(key for key in converter.cited if key not in cited)
    return result


# ---------------------------------------------------------------- the student notebooks


def student_notebook(nb: dict[str, Any], numbers: dict[str, str] | None = None,
                     bibliography: dict[str, Any] | None = None,
                     where: str = "notebook") -> dict[str, Any]:
    """The student version of a chapter: solution blocks removed, outputs cleared.

    With ``numbers`` (see :func:`reader_numbers`) the Markdown is converted to plain Jupyter
    Markdown as well (:func:`plain_markdown`, glued values taken from ``nb``'s outputs) and,
    when the chapter cites anything, a "References" cell listing the works is appended.

    Raises ``ValueError`` for a solution block that is opened and never closed (or closed
    without being opened), so a broken chapter cannot leak its solutions.
    """
    glue = glue_values(nb)
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
    if numbers is not None:
        cited: list[str] = []
        for cell in cells:
            if cell.get("cell_type") == "markdown":
                cell["source"] = plain_markdown(_source(cell), numbers, glue, bibliography,
                                                where=where, cited=cited)
        cells = [c for c in cells if c.get("cell_type") != "markdown" or _source(c).strip()]
        if cited:
            import nbformat

            listing = "\n".join(f"- {reference_entry(bibliography[key])}"
                                for key in sorted(cited, key=lambda k: author_year(
                                    bibliography[k]).lower()))
            cells.append(nbformat.v4.new_markdown_cell(f"## References\n\n{listing}"))
    nb["cells"] = cells
    return nb


# Packages a student needs to run the chapters (pinned as requirements.txt pins them).
KIT_PACKAGES = ("torch", "numpy", "scipy", "matplotlib", "scikit-learn", "tqdm")
KIT_README = """\
# Batch normalization, verified: the student kit

The chapters of the course as Jupyter notebooks, with the exercises to do and their
solutions removed. Each exercise ends in a check that says *Correct*, *Not yet* (naming the
mistake when it is a common one) or *Not attempted*. The kit holds:

- the chapters, `01_*.ipynb` onwards, to work through in order;
- `data/`, the tables the chapters read;
- `{wheel}`, the course's Python package `bncourse` (the checks, the reference
  formulas, the plots);
- `requirements.txt`, everything the notebooks import, the package above included;
- `GLOSSARY.md`, the definitions of the terms that mean different things in different
  frameworks and papers (batch and running statistics, momentum, eps, folding, ...).

## Three commands

With Python 3.11 or newer, in this folder:

```bash
python3 -m venv .venv
.venv/bin/pip install -r requirements.txt
.venv/bin/jupyter lab
```

On Windows the second and third are `.venv\\Scripts\\pip install -r requirements.txt` and
`.venv\\Scripts\\jupyter lab`. JupyterLab opens in the browser: open `01_transform.ipynb`
(or whichever chapter comes first) and run it from the top. Running a whole notebook
before doing its exercises is fine: untouched exercises say *Not attempted*.

On Linux, pip installs PyTorch's CUDA build by default, several gigabytes. The course needs
only the CPU: install that build instead with

```bash
.venv/bin/pip install -r requirements.txt --extra-index-url https://download.pytorch.org/whl/cpu
```

The worked solutions, the figures and the rest of the course are in the book.
"""


GLOSSARY_SOURCE = Path("book") / "glossary.md"
_GLOSSARY_FENCE = re.compile(r"^```\{glossary\}[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def glossary_entries(text: str) -> list[tuple[str, str]]:
    """The ``(term, definition)`` pairs of the glossary directive in ``text`` (book markup:
    a term on its own line, its definition indented below it)."""
    fence = _GLOSSARY_FENCE.search(text)
    if fence is None:
        raise ValueError("the glossary page has no ```{glossary} block")
    entries: list[tuple[str, list[str]]] = []
    for line in fence.group(1).splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            entries.append((line.strip(), []))
        elif entries:
            entries[-1][1].append(line.strip())
        else:
            raise ValueError(f"the glossary's definition {line.strip()!r} has no term")
    empty = [term for term, lines in entries if not lines]
    if empty:
        raise ValueError(f"glossary terms without a definition: {empty}")
    return [(term, " ".join(lines)) for term, lines in entries]


def glossary_markdown(root: Path = ROOT, numbers: dict[str, str] | None = None,
                      bibliography: dict[str, Any] | None = None) -> str:
    """The book's glossary as plain Markdown for the student kit (``GLOSSARY.md``): the
    notebooks show the book's ``{term}`` links as plain words, defined here."""
    text = (root / GLOSSARY_SOURCE).read_text(encoding="utf-8")
    numbers = reader_numbers(root) if numbers is None else numbers
    bibliography = _bibliography(root) if bibliography is None else bibliography
    cited: list[str] = []
    lines = ["# Glossary", "",
             "The words of batch normalization that mean different things in different "
             "frameworks and papers, as the course uses them.", ""]
    for term, definition in glossary_entries(text):
        plain = plain_markdown(definition, numbers, bibliography=bibliography,
                               where=str(GLOSSARY_SOURCE), cited=cited)
        lines += [f"**{term}**: {plain.strip()}", ""]
    if cited:
        lines += ["## References", ""]
        lines += [f"- {reference_entry(bibliography[key])}" for key in cited]
        lines.append("")
    return "\n".join(lines)


def _kit_requirements(root: Path, wheel: str) -> str:
    lines = ["# Everything the chapters import. Install with: pip install -r requirements.txt",
             "# (run from this folder: the last line is the course's package, beside this file)"]
    for raw in (root / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() if line else ""
        if name in KIT_PACKAGES:
            lines.append(line)
    missing = set(KIT_PACKAGES) - {re.split(r"[<>=!~\[; ]", x, maxsplit=1)[0].lower()
                                   for x in lines[2:]}
    if missing:
        raise ValueError(f"requirements.txt does not list {sorted(missing)}, which the kit needs")
    lines += ["jupyterlab>=4", "ipykernel>=6.29", f"./{wheel}"]
    return "\n".join(lines) + "\n"


def build_wheel(out_dir: Path, root: Path = ROOT) -> Path:
    """Build the ``bncourse`` wheel into ``out_dir`` (from a copy, so the tree stays clean)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, source / name)
        shutil.copytree(root / "bncourse", source / "bncourse",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
             "--no-build-isolation", "--wheel-dir", str(out_dir), str(source)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the bncourse wheel failed:\n{result.stderr}")
    wheels = sorted(out_dir.glob("bncourse-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise RuntimeError("pip reported success but wrote no bncourse wheel")
    return wheels[-1]


def write_student_kit(out_dir: Path, root: Path = ROOT, zip_path: Path | None = None,
                      wheel: bool = True) -> list[Path]:
    """Write the student kit into ``out_dir`` and zip it; return the notebooks written.

    ``out_dir`` runs as it is (the notebooks beside ``data/``), and so does the zip once
    unpacked: it holds the same files under ``bncourse-student-kit/``. The zip goes to
    ``zip_path`` (default ``out_dir/bncourse-student-kit.zip``).
    """
    import nbformat

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("bncourse-*.whl"):
        old.unlink()
    numbers = reader_numbers(root)
    bibliography = _bibliography(root)
    written = []
    for path in toc_notebooks(root):
        nb = nbformat.read(path, as_version=4)
        student = nbformat.from_dict(student_notebook(nb, numbers, bibliography,
                                                      where=path.name))
        target = out_dir / path.name
        nbformat.write(student, target)
        written.append(target)
    files = list(written)
    data_dir = root / "book" / "data"
    if data_dir.is_dir():
        shutil.copytree(data_dir, out_dir / "data", dirs_exist_ok=True)
        files += sorted(p for p in (out_dir / "data").rglob("*") if p.is_file())
    if wheel:
        built = build_wheel(out_dir, root)
        (out_dir / "requirements.txt").write_text(_kit_requirements(root, built.name),
                                                  encoding="utf-8")
        (out_dir / "README.md").write_text(KIT_README.format(wheel=built.name),
                                           encoding="utf-8")
        files += [built, out_dir / "requirements.txt", out_dir / "README.md"]
    if (root / GLOSSARY_SOURCE).is_file():
        (out_dir / "GLOSSARY.md").write_text(glossary_markdown(root, numbers, bibliography),
                                             encoding="utf-8")
        files.append(out_dir / "GLOSSARY.md")
    zip_path = zip_path or out_dir / STUDENT_ZIP
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in files:
            archive.write(item, arcname=f"{KIT_DIR}/{item.relative_to(out_dir).as_posix()}")
    return written


def write_student_notebooks(out_dir: Path, root: Path = ROOT) -> list[Path]:
    """The student kit without its wheel (quick; for tests of the notebooks alone)."""
    return write_student_kit(out_dir, root, wheel=False)


# ---------------------------------------------------------------- hosted Jupyter (Colab)


def repository_url(root: Path = ROOT) -> tuple[str, str]:
    """``(url, branch)`` of ``repository`` in ``_config.yml`` (url empty while unpublished)."""
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    repository = config.get("repository") or {}
    return str(repository.get("url") or "").strip(), str(repository.get("branch") or "main")


def colab_cell(url: str, branch: str = "main") -> str:
    """The source of a chapter's first cell: install ``bncourse`` only where it is missing."""
    head = ("# Colab, Binder and other hosted Jupyter: install the course's package `bncourse`\n"
            "# when it is missing. Anywhere it is installed already, this cell does nothing.\n"
            "import importlib.util\n\n"
            'if importlib.util.find_spec("bncourse") is None:\n')
    if url:
        return head + f'    %pip install --quiet "bncourse @ git+{url}@{branch}"'
    return head + ('    raise ModuleNotFoundError(\n'
                   '        "bncourse is not installed: it comes with the course\'s student kit "\n'
                   '        "or its repository (see the README)"\n'
                   '    )')


def add_colab_cell(nb: dict[str, Any], url: str, branch: str = "main") -> dict[str, Any]:
    """``nb`` with :func:`colab_cell` as its first cell (hidden in the book), in place."""
    import nbformat

    source = colab_cell(url, branch)
    cells = nb["cells"]
    existing = [c for c in cells if c.get("id") == COLAB_CELL_ID]
    if existing:
        cell = existing[0]
        cells.remove(cell)
        cell["source"] = source
    else:
        cell = nbformat.v4.new_code_cell(source)
        cell["id"] = COLAB_CELL_ID
    cell.setdefault("metadata", {})["tags"] = ["remove-cell"]
    cell["outputs"] = []
    cell["execution_count"] = None
    cells.insert(0, cell)
    return nb


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
    st = sub.add_parser("student", help="write the student kit and its zip")
    st.add_argument("out_dir", type=Path)
    st.add_argument("--zip", type=Path, default=None,
                    help=f"where the zip goes (default OUT_DIR/{STUDENT_ZIP})")
    sub.add_parser("colab-cell", help="give every chapter the cell that installs bncourse "
                                      "where it is missing (for repository.url)")
    sub.add_parser("numbers", help="print the numbers the reader sees, by label (JSON)")
    args = parser.parse_args(argv)

    if args.command == "notebooks":
        print(" ".join(str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)
                       for p in toc_notebooks()))
    elif args.command == "execute":
        for path in args.notebooks or toc_notebooks():
            print(f"executing {path} ...", flush=True)
            print(f"  done in {execute_notebook(path):.1f} s", flush=True)
    elif args.command == "student":
        written = write_student_kit(args.out_dir, zip_path=args.zip)
        print(f"wrote the student kit ({len(written)} notebooks) to {args.out_dir} and "
              f"{args.zip or args.out_dir / STUDENT_ZIP}")
    elif args.command == "colab-cell":
        import nbformat

        url, branch = repository_url()
        for path in toc_notebooks():
            nb = nbformat.read(path, as_version=4)
            nbformat.write(nbformat.from_dict(add_colab_cell(nb, url, branch)), path)
            print(f"{path.name}: first cell installs bncourse from {url or '(no url yet)'}")
    elif args.command == "numbers":
        print(json.dumps(reader_numbers(), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
