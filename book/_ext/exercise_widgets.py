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

The exercise's stub cell (``answer = ...`` then ``check("<id>", answer)``) keeps its code on
the page, but its stored output, the verdict on the empty answer ("Not attempted") and the
first hint, is replaced by a line saying what the cell prints in a notebook: under a widget
that says "Correct" it would contradict the page, and it would give the first hint away.

The widgets keep each answer and verdict in the browser (``bncourse-progress.js``, one
``localStorage`` key, nothing sent anywhere) and show them again when the page is loaded. A
page holding ``<div class="bncourse-progress-page"></div>`` (``book/progress.md``) becomes
the "Your progress" page: every exercise of the book by chapter, with links, states and counts,
and export, import and reset (``bncourse-progress-page.js``).

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
ASSETS = ("bncourse-exercises.js", "bncourse-exercises.css", "bncourse-progress.js",
          "bncourse-progress-page.js")
PROGRESS_PLACEHOLDER = '<div class="bncourse-progress-page"></div>'
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
    # inputmode "text": a decimal keypad has no minus sign or "e" on some phones.
    return (
        '<form class="bncourse-form" novalidate autocomplete="off">'
        f'<label for="{field}">Your answer, a number: </label>'
        f'<input type="text" inputmode="text" spellcheck="false" autocapitalize="off" '
        f'class="bncourse-answer" id="{field}" placeholder="e.g. 0.5, -2, 1e-3 or 1/4"> '
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


def widget_html(data: dict[str, Any], eid: str, prefix: str = "", launch: bool = False,
                name: str | None = None) -> str:
    """The widget that follows exercise ``eid`` on a page ``prefix`` away from the root;
    ``name`` ("Exercise 4.1") names its answer group for a screen reader."""
    exercise = data["exercises"][eid]
    if exercise["kind"] == "function":
        return _function_note(eid, prefix, launch)
    common = {k: v for k, v in data.items() if k != "exercises"}
    form = (_number_form(eid) if exercise["kind"] == "number"
            else _choice_form(eid, exercise["options"]))
    if name:
        form = form.replace('<form class="bncourse-form"',
                            f'<form class="bncourse-form" aria-label="{html.escape(name)}: '
                            'your answer"', 1)
    return (
        f'<div class="bncourse-widget bncourse-{exercise["kind"]}" '
        f'data-exercise-id="{html.escape(eid)}" '
        f'data-exercise="{_attribute({"common": common, "exercise": exercise})}">'
        f"{form}"
        '<ol class="bncourse-hints" aria-live="polite" hidden></ol>'
        # Rendered (and empty) from the start, so that the first verdict is announced.
        '<div class="bncourse-result" role="status" aria-live="polite"></div>'
        "<noscript><p>The in-page check needs JavaScript; the chapter's notebook checks the "
        "same answer with <code>check</code>.</p></noscript>"
        "</div>"
    )


def _builder_inited(app: Sphinx) -> None:
    app._bncourse_exercise_data = _site_data()  # type: ignore[attr-defined]
    app._bncourse_widget_pages = set()  # type: ignore[attr-defined]
    app._bncourse_placed = {}  # type: ignore[attr-defined]
    app._bncourse_progress_pages = set()  # type: ignore[attr-defined]
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


def _exercise_name(env: Any, docname: str, node: nodes.Element) -> str | None:
    """"Exercise 4.1": the number Sphinx shows for the exercise ``node``."""
    node_id = (node.get("ids") or [node.get("label", "")])[0]
    value = getattr(env, "toc_fignumbers", {}).get(docname, {}).get("exercise", {}).get(node_id)
    return "Exercise " + ".".join(map(str, value)) if value else None


def _stub_cells(node: nodes.Element, eid: str) -> list[nodes.Element]:
    """The code cells after exercise ``node`` (before the next exercise) that call
    ``check("<eid>", ...)``."""
    cells = []
    parent = node.parent
    for sibling in parent.children[parent.index(node) + 1:]:
        if _is_exercise(sibling):
            break
        if not isinstance(sibling, nodes.container) or "cell" not in sibling.get("classes", []):
            continue
        source = "".join(b.astext() for b in sibling.findall(nodes.literal_block)
                         if "cell_input" in b.parent.get("classes", []))
        if any(m.group(1) == eid for m in _CHECK_CALL.finditer(source)):
            cells.append(sibling)
    return cells


def _stub_note(kind: str) -> str:
    where = ("the box above checks the same answer on this page"
             if kind != "function" else "the notebook is where a function can be run")
    return (
        '<p class="bncourse-stub-note">In the notebook, this cell prints the checker\'s verdict '
        f"on your answer (and, before you answer, the first hint); {where}.</p>"
    )


def _drop_stub_outputs(node: nodes.Element, eid: str, kind: str) -> None:
    """The stored output of the exercise's stub cell is the verdict on an empty answer ("Not
    attempted") and the first hint: on the site it would contradict the widget's verdict and
    give the hint away, so the page shows, in its place, what the cell does in a notebook."""
    for cell in _stub_cells(node, eid):
        outputs = [c for c in cell.children
                   if isinstance(c, nodes.container) and "cell_output" in c.get("classes", [])]
        for output in outputs:
            text = output.astext() + "".join(r.astext() for r in output.findall(nodes.raw))
            if "Not attempted" in text or "not-attempted" in text:
                cell.replace(output, nodes.raw("", _stub_note(kind), format="html"))


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
        name = _exercise_name(app.env, docname, node)
        raw = nodes.raw("", widget_html(data, eid, prefix, launch, name), format="html")
        _drop_stub_outputs(node, eid, data["exercises"][eid]["kind"])
        node.parent.insert(node.parent.index(node) + 1, raw)
        app._bncourse_widget_pages.add(docname)  # type: ignore[attr-defined]
    for raw in list(doctree.findall(nodes.raw)):
        if raw.astext().strip() == PROGRESS_PLACEHOLDER:
            html_text = progress_html(app, docname)
            raw.replace_self(nodes.raw("", html_text, format="html"))
            app._bncourse_progress_pages.add(docname)  # type: ignore[attr-defined]


def exercise_places(app: Sphinx) -> dict[str, tuple[str, str, str | None]]:
    """Where each exercise of the book is: ``{id: (docname, anchor, "Exercise 4.1")}``."""
    data = app._bncourse_exercise_data  # type: ignore[attr-defined]
    by_label = {label_of(eid): eid for eid in data["exercises"]}
    places: dict[str, tuple[str, str, str | None]] = {}
    for docname in sorted(app.env.found_docs):
        try:
            doctree = app.env.get_doctree(docname)
        except Exception:  # noqa: BLE001 - a page without a stored doctree has no exercise
            continue
        for node in doctree.findall(_is_exercise):
            eid = by_label.get(node.get("label", "")) or _id_from_following_code(node)
            if eid in data["exercises"] and eid not in places:
                anchor = (node.get("ids") or [node.get("label", "")])[0]
                places[eid] = (docname, anchor, _exercise_name(app.env, docname, node))
    return places


_WORD = {"number": "a number", "choice": "a choice", "function": "a function"}


def progress_html(app: Sphinx, docname: str) -> str:
    """The "Your progress" page's body: every exercise of every chapter, by chapter, with a
    link to it; ``bncourse-progress-page.js`` fills in the states from this browser's storage
    and runs the export, import and reset buttons."""
    data = app._bncourse_exercise_data  # type: ignore[attr-defined]
    places = exercise_places(app)
    missing = sorted(set(data["exercises"]) - set(places))
    if missing:
        logger.info(f"exercises with no place in the book (not listed): {', '.join(missing)}")
    chapters: dict[int, list[str]] = {}
    for eid, exercise in data["exercises"].items():
        if eid in places:
            chapters.setdefault(int(exercise["chapter"]), []).append(eid)
    order = {eid: i for i, eid in enumerate(
        sorted(places, key=lambda e: (places[e][0], _number_key(places[e][2]))))}
    parts = [
        '<div class="bncourse-progress-tools">'
        '<button type="button" class="bncourse-progress-export">Export progress (JSON)</button>'
        '<label class="bncourse-progress-import-label">Import progress: '
        '<input type="file" class="bncourse-progress-import" accept=".json,application/json">'
        "</label>"
        '<button type="button" class="bncourse-progress-reset">Reset progress</button>'
        '<p class="bncourse-progress-message" role="status" aria-live="polite"></p>'
        "</div>",
        '<p class="bncourse-progress-total"></p>',
    ]
    for chapter in sorted(chapters):
        ids = sorted(chapters[chapter], key=order.__getitem__)
        page = places[ids[0]][0]
        title = app.env.titles[page].astext() if page in app.env.titles else f"Chapter {chapter}"
        heading_id = f"progress-chapter-{chapter}"
        rows = []
        for eid in ids:
            target, anchor, name = places[eid]
            kind = data["exercises"][eid]["kind"]
            href = app.builder.get_relative_uri(docname, target) + "#" + anchor
            mark = ""
            if kind == "function":
                mark = (' <label class="bncourse-progress-mark-label"><input type="checkbox" '
                        'class="bncourse-progress-mark"> passed in the notebook</label>')
            ex_title = html.escape(data["exercises"][eid]["title"])
            rows.append(
                f'<tr data-exercise-id="{html.escape(eid)}" data-kind="{kind}">'
                f'<td><a href="{html.escape(href)}">{html.escape(name or eid)}</a> '
                f'<span class="bncourse-progress-title">{ex_title}'
                f"</span></td><td>{_WORD[kind]}</td>"
                f'<td><span class="bncourse-progress-state">not attempted</span>{mark}</td></tr>'
            )
        parts.append(
            f'<section class="bncourse-progress-chapter" data-chapter="{chapter}" '
            f'aria-labelledby="{heading_id}">'
            f'<h2 id="{heading_id}">{chapter}. {html.escape(title)}</h2>'
            '<p class="bncourse-progress-count"></p>'
            '<table class="bncourse-progress-table"><thead><tr><th scope="col">Exercise</th>'
            '<th scope="col">Answer</th><th scope="col">State</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></section>"
        )
    parts.append("<noscript><p>This page reads your progress from the browser with JavaScript, "
                 "which is off.</p></noscript>")
    return '<div class="bncourse-progress-page">' + "".join(parts) + "</div>"


def _number_key(name: str | None) -> tuple[int, ...]:
    found = re.findall(r"\d+", name or "")
    return tuple(int(n) for n in found) if found else (10**6,)


def _page_context(app: Sphinx, pagename: str, templatename: str, context: dict,
                  doctree: Any) -> None:
    if pagename in getattr(app, "_bncourse_widget_pages", ()):
        app.add_css_file(ASSETS[1])
        app.add_js_file(ASSETS[2])
        app.add_js_file(ASSETS[0])
    if pagename in getattr(app, "_bncourse_progress_pages", ()):
        app.add_css_file(ASSETS[1])
        app.add_js_file(ASSETS[2])
        app.add_js_file(ASSETS[3])


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("builder-inited", _builder_inited)
    app.connect("doctree-resolved", _doctree_resolved)
    app.connect("html-page-context", _page_context, priority=500)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": False}
