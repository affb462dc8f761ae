"""The book's markup: no directive is closed early by a code block inside it.

A directive written as a backtick fence (```` ```{exercise} ````) ends at the first line of at
least as many backticks. A ```` ```python ```` block inside it, with the same number of
backticks, therefore closes the directive at the inner block's closing fence: the rest of
the directive spills out of it and its own closing fence opens a stray empty code block.
The fix is a longer outer fence (four backticks) or a colon fence (``:::{exercise}``).

The check parses the markdown as CommonMark (markdown-it, the parser under MyST) and flags
every directive fence whose content holds a line that opens a fence of the same character
at least as long as the directive's own: that inner block is what closed it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"

_PARSER = MarkdownIt("commonmark")


def early_closed_directives(markdown: str) -> list[str]:
    """The directives of ``markdown`` closed early by an inner code fence, as short reports.

    Each report names the directive, the line it opens on (from 1) and the inner fence that
    closed it.
    """
    reports = []
    for token in _PARSER.parse(markdown):
        if token.type != "fence" or not token.info.strip().startswith("{"):
            continue
        fence_char, length = token.markup[0], len(token.markup)
        inner = re.compile(rf"^ {{0,3}}{re.escape(fence_char)}{{{length},}}\s*\S")
        for line in token.content.splitlines():
            if inner.match(line):
                directive = token.info.strip().split()[0]
                opened = token.map[0] + 1 if token.map else 0
                reports.append(
                    f"{directive} opened on line {opened} is closed early by the block "
                    f"{line.strip()!r} inside it: use a longer outer fence "
                    f"({fence_char * (length + 1)}) or a colon fence"
                )
                break
    return reports


def _book_markdown() -> list[tuple[str, str]]:
    """Every markdown source of the book: (where, text) per notebook cell and per page."""
    sources = []
    for notebook in sorted(BOOK.glob("*.ipynb")):
        nb = json.loads(notebook.read_text(encoding="utf-8"))
        for index, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "markdown":
                source = cell["source"]
                text = "".join(source) if isinstance(source, list) else source
                sources.append((f"{notebook.name}, cell {index}", text))
    for page in sorted(BOOK.glob("*.md")):
        sources.append((page.name, page.read_text(encoding="utf-8")))
    return sources


_EARLY_CLOSED = """```{exercise} Find the bug
:label: ex-fixture

```python
def f(x):
    return x
```
```
"""

_LONGER_FENCE = _EARLY_CLOSED.replace("```{exercise}", "````{exercise}").rstrip("`\n") + "````\n"

_COLON_FENCE = """:::{exercise} Find the bug
:label: ex-fixture

```python
def f(x):
    return x
```
:::
"""


def test_an_early_closed_directive_is_caught():
    reports = early_closed_directives(_EARLY_CLOSED)
    assert len(reports) == 1, reports
    assert "{exercise} opened on line 1" in reports[0] and "```python" in reports[0], reports


@pytest.mark.parametrize("markdown", [_LONGER_FENCE, _COLON_FENCE,
                                      "```{note}\nNo code inside.\n```\n",
                                      "````{note}\n```{math}\nx\n```\n````\n"],
                         ids=["longer-fence", "colon-fence", "no-inner-block", "nested-directive"])
def test_properly_nested_blocks_are_accepted(markdown):
    assert early_closed_directives(markdown) == []


def test_a_directive_closed_early_by_a_nested_directive_is_caught():
    assert early_closed_directives("```{note}\n```{math}\nx\n```\n```\n")


def test_no_directive_in_the_book_is_closed_early():
    sources = _book_markdown()
    assert sources, "no markdown found in book/"
    problems = [f"{where}: {report}" for where, text in sources
                for report in early_closed_directives(text)]
    assert not problems, "directives closed early:\n" + "\n".join(problems)


# ---------------------------------------------------------------- glossary terms

_TERM_ROLE = re.compile(r"\{term\}`(?:[^`<]*<)?([^`<>]+)>?`")


def test_every_term_role_names_a_glossary_entry():
    from bncourse.authoring import glossary_entries

    defined = {term.lower() for term, _ in glossary_entries(
        (BOOK / "glossary.md").read_text(encoding="utf-8"))}
    used = {}
    for where, markdown in _book_markdown():
        for target in _TERM_ROLE.findall(markdown):
            used.setdefault(target.strip().lower(), where)
    unknown = {t: w for t, w in used.items() if t not in defined}
    assert used, "no {term} role in the book"
    assert not unknown, f"{{term}} roles with no glossary entry: {unknown}"
    unused = sorted(defined - set(used))
    assert not unused, f"glossary terms that no chapter links: {unused}"


def test_the_student_kit_writes_terms_as_words_and_the_glossary_as_a_file():
    from bncourse.authoring import glossary_entries, glossary_markdown, plain_markdown

    text = plain_markdown("the {term}`ghost batches <ghost batch>` and {term}`momentum`", {})
    assert text.strip() == "the ghost batches and momentum"
    written = glossary_markdown()
    for term, _ in glossary_entries((BOOK / "glossary.md").read_text(encoding="utf-8")):
        assert f"**{term}**: " in written
    assert "{cite" not in written and "{term" not in written, "book markup left in GLOSSARY.md"


def test_a_glossary_term_without_a_definition_is_refused():
    from bncourse.authoring import glossary_entries

    with pytest.raises(ValueError, match="without a definition"):
        glossary_entries("```{glossary}\nmomentum\n\neps\n  the constant\n```\n")


def test_the_student_kit_holds_the_glossary(tmp_path):
    import zipfile

    from bncourse.authoring import KIT_DIR, STUDENT_ZIP, write_student_kit

    write_student_kit(tmp_path, wheel=False)
    with zipfile.ZipFile(tmp_path / STUDENT_ZIP) as archive:
        glossary = archive.read(f"{KIT_DIR}/GLOSSARY.md").decode("utf-8")
    assert "**momentum**: " in glossary
    for notebook in tmp_path.glob("*.ipynb"):
        text = notebook.read_text(encoding="utf-8")
        assert "{term}" not in text, f"{notebook.name} shows a raw {{term}} role"
