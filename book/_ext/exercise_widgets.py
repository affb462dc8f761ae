"""Sphinx extension: check the course's number and choice exercises in the page.

After every exercise of the book that the checker knows (``bncourse.exercises.EXERCISES``),
the page gets a widget:

* a number exercise, an answer field and a "Check" button;
* a choice exercise, its options and a "Check" button;
* a function exercise, a note on how to run it (the student notebooks, and the launch
  buttons once the repository is set).

The page gives the verdict and the message that ``bncourse.exercises.check`` gives, with
no Python and no network: ``bncourse-exercises.js`` implements the same rules, and each
widget carries its exercise's data (value and tolerances, round-off allowance, options,
catalogue of wrong values and letters with their messages, hints, and the message
templates), exported from ``EXERCISES`` at build time. The whole export is also written to
``_static/bncourse-exercises.json``: one source of truth, the Python catalogue.

An exercise is matched to its checker id by its label: ``ex-`` and the id with its dots
and underscores written as hyphens (``formula.hand_computed`` is ``ex-formula-hand-computed``).
An exercise whose label follows no id is matched by the ``check("<id>", ...)`` call of the
first code cell after it.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "exercise_static"
ASSETS = ("bncourse-exercises.js", "bncourse-exercises.css")
DATA_FILE = "bncourse-exercises.json"
KIT = "_downloads/bncourse-student-kit.zip"
_CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([A-Za-z0-9_.]+)["']""")


def label_of(exercise_id: str) -> str:
    """The exercise label that names ``exercise_id``: ``ex-`` plus the id, hyphenated."""
    return "ex-" + re.sub(r"[._]", "-", exercise_id)


def _site_data() -> dict[str, Any]:
    from bncourse.exercises import site_data

    return site_data()


def _is_exercise(node: nodes.Node) -> bool:
    return type(node).__name__ in {"exercise_node", "exercise_enumerable_node"}


def _id_from_following_code(node: nodes.Element) -> str | None:
    """The id of the first ``check("...")`` in the code after ``node``, before the next
    exercise."""
    parent = node.parent
    if parent is None:
        return None
    for sibling in parent.children[parent.index(node) + 1:]:
        if _is_exercise(sibling):
            return None
        for block in sibling.findall(nodes.literal_block):
            match = _CHECK_CALL.search(block.astext())
            if match:
                return match.group(1)
    return None


def _attribute(data: dict[str, Any]) -> str:
    return html.escape(json.dumps(data, separators=(",", ":"), ensure_ascii=True), quote=True)


def _number_form(eid: str) -> str:
    field = f"bncourse-answer-{html.escape(eid)}"
    return (
        '<form class="bncourse-form" novalidate autocomplete="off">'
        f'<label for="{field}">Your answer, a number: </label>'
        f'<input type="text" inputmode="decimal" spellcheck="false" class="bncourse-answer" '
        f'id="{field}" placeholder="e.g. 0.5 or 1e-3"> '
        '<button type="submit" class="bncourse-check-button">Check</button>'
        '<button type="button" class="bncourse-hint-button">Hint</button>'
        "</form>"
    )


def _choice_form(eid: str, options: dict[str, str]) -> str:
    items = []
    for letter in sorted(options):
        items.append(
            f'<li><label><input type="radio" name="bncourse-choice-{html.escape(eid)}" '
            f'value="{html.escape(letter)}"><span>({html.escape(letter)}) '
            f"{html.escape(options[letter])}</span></label></li>"
        )
    return (
        '<form class="bncourse-form" novalidate autocomplete="off"><fieldset>'
        "<legend>Your answer</legend>"
        f'<ul class="bncourse-options">{"".join(items)}</ul>'
        '<button type="submit" class="bncourse-check-button">Check</button>'
        '<button type="button" class="bncourse-hint-button">Hint</button>'
        "</fieldset></form>"
    )


def _function_note(eid: str, prefix: str, launch: bool) -> str:
    launch_text = (
        " Or open this chapter as a notebook with the launch button at the top of the page."
        if launch else ""
    )
    return (
        f'<div class="bncourse-widget bncourse-function" data-exercise-id="{html.escape(eid)}">'
        '<p class="bncourse-note">This exercise asks for a function, which the page cannot run. '
        "Run it in the chapter's notebook, where "
        f'<code>check("{html.escape(eid)}", your_function)</code> tries it on the checker\'s '
        "cases: the notebooks, without their solutions, are in the "
        f'<a href="{prefix}{KIT}" download>student kit</a>.{launch_text}</p></div>'
    )


def widget_html(data: dict[str, Any], eid: str, prefix: str = "", launch: bool = False) -> str:
    """The widget that follows exercise ``eid`` on a page ``prefix`` away from the root."""
    exercise = data["exercises"][eid]
    if exercise["kind"] == "function":
        return _function_note(eid, prefix, launch)
    common = {k: v for k, v in data.items() if k != "exercises"}
    form = (_number_form(eid) if exercise["kind"] == "number"
            else _choice_form(eid, exercise["options"]))
    return (
        f'<div class="bncourse-widget bncourse-{exercise["kind"]}" '
        f'data-exercise-id="{html.escape(eid)}" '
        f'data-exercise="{_attribute({"common": common, "exercise": exercise})}">'
        f"{form}"
        '<ol class="bncourse-hints" hidden></ol>'
        '<div class="bncourse-result" role="status" aria-live="polite" hidden></div>'
        "<noscript><p>The in-page check needs JavaScript; the chapter's notebook checks the "
        "same answer with <code>check</code>.</p></noscript>"
        "</div>"
    )


def _builder_inited(app: Sphinx) -> None:
    app._bncourse_exercise_data = _site_data()  # type: ignore[attr-defined]
    app._bncourse_widget_pages = set()  # type: ignore[attr-defined]
    app._bncourse_placed = {}  # type: ignore[attr-defined]
    if app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    static.mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        shutil.copy2(STATIC / name, static / name)
    (static / DATA_FILE).write_text(
        json.dumps(app._bncourse_exercise_data, indent=1, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )


def _doctree_resolved(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    if app.builder.format != "html":
        return
    data = app._bncourse_exercise_data  # type: ignore[attr-defined]
    by_label = {label_of(eid): eid for eid in data["exercises"]}
    prefix = "../" * docname.count("/")
    launch = bool((app.config.html_theme_options or {}).get("repository_url"))
    for node in list(doctree.findall(_is_exercise)):
        eid = by_label.get(node.get("label", "")) or _id_from_following_code(node)
        if eid is None or eid not in data["exercises"]:
            continue
        placed = app._bncourse_placed  # type: ignore[attr-defined]
        if eid in placed and placed[eid] != docname:
            logger.warning(f"exercise {eid} has a widget in {placed[eid]} and in {docname}",
                           location=node)
        placed[eid] = docname
        raw = nodes.raw("", widget_html(data, eid, prefix, launch), format="html")
        node.parent.insert(node.parent.index(node) + 1, raw)
        app._bncourse_widget_pages.add(docname)  # type: ignore[attr-defined]


def _page_context(app: Sphinx, pagename: str, templatename: str, context: dict,
                  doctree: Any) -> None:
    if pagename in getattr(app, "_bncourse_widget_pages", ()):
        app.add_css_file(ASSETS[1])
        app.add_js_file(ASSETS[0])


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("builder-inited", _builder_inited)
    app.connect("doctree-resolved", _doctree_resolved)
    app.connect("html-page-context", _page_context, priority=500)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": False}
