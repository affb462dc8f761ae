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
