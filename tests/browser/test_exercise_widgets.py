"""The in-page exercise checks, in headless Chromium.

Every number and choice exercise of the book has, on its page, an answer field (or its
options) and a "Check" button; the page judges with the data exported from
``bncourse.exercises.EXERCISES`` at build time. Here, for every such exercise, the page and
the Python checker must agree (status, message and catalogued mistake) on a set of answers:
the right one written several ways, each catalogued mistake, and junk. The button must show
the verdict, the hints must come one by one, every function exercise must say how to run
it, and the verdict boxes must be readable in light and in dark mode.
"""

from __future__ import annotations

import json
import re
from functools import cache

import pytest
from sitepages import SITE, page_html, site_pages

from bncourse.exercises import EXERCISES, check, site_data
from bncourse.exercises.core import page_answer

PAGE_IDS = [eid for eid, e in EXERCISES.items() if e.kind in {"number", "choice"}]
FUNCTION_IDS = [eid for eid, e in EXERCISES.items() if e.kind == "function"]
_WIDGET = re.compile(r'class="bncourse-widget bncourse-(\w+)"[^>]*?data-exercise-id="([^"]+)"')


@cache
def widgets() -> dict[str, list[tuple[str, str]]]:
    """Exercise id -> [(page, kind)] of every widget of the built site."""
    found: dict[str, list[tuple[str, str]]] = {}
    for page in site_pages():
        for kind, eid in _WIDGET.findall(page_html(page)):
            found.setdefault(eid, []).append((page, kind))
    return found


def page_of(eid: str) -> str:
    places = widgets().get(eid, [])
    assert places, f"{eid} has no widget on any page of the site"
    return places[0][0]


def answers(eid: str) -> list[str]:
    """What a reader may type: right answers, each catalogued mistake, and junk."""
    exercise = EXERCISES[eid]
    if exercise.kind == "number":
        v = float(exercise.value)
        texts = [repr(v), f"{v:.6g}", f" {v!r} ", f"{v:.4e}", repr(v * (1 + 1e-3) + 1e-3),
                 repr(-v - 1.5)]
        for mistake in exercise.mistakes:
            texts += [repr(float(mistake.answer)), f"{float(mistake.answer):.6g}"]
        if exercise.roundoff:
            texts += [repr(exercise.roundoff / 2), repr(-exercise.roundoff), repr(
                3 * exercise.roundoff)]
        texts += ["", "  ", "abc", "1/4", "0x10", "1_000", "inf", "nan", "1e999", "-1e999",
                  "0.5.1", "1e", "+.5", "-0", "5.", "(b)", "123456789", "1e-7", "-2.5e-05",
                  "x" * 60]
        return texts
    texts = []
    for letter in sorted(exercise.options):
        texts += [letter, f"({letter})", f"{letter})", f"{letter}.", f"{letter}:",
                  f" {letter.upper()} "]
    return texts + ["", "   ", "zz", "(z)", "option a", "ab", "1", "y" * 50, "( b", "b )"]


@cache
def built_exercises() -> dict[str, dict]:
    """The exercises as the built site exported them."""
    data = json.loads((SITE / "_static" / "bncourse-exercises.json").read_text("utf-8"))
    return data["exercises"]


def require_fresh(eid: str) -> None:
    """Fail clearly when the site was built from another version of exercise ``eid``."""
    current = json.loads(json.dumps(site_data()))["exercises"].get(eid)
    assert built_exercises().get(eid) == current, (
        f"the site was built from another version of {eid} than bncourse.exercises holds "
        f"now: rebuild the site (make book) before comparing the page with the checker"
    )


@pytest.fixture(scope="module")
def tab_of(open_tab):
    """One open tab per page, shared by the tests of this module."""
    tabs: dict[str, object] = {}

    def _tab(page: str):
        if page not in tabs:
            tabs[page] = open_tab(page)
            tabs[page].page.wait_for_function("() => window.bncourseExercises !== undefined")
        return tabs[page]

    return _tab


def test_the_site_carries_the_package_s_exercise_data():
    written = json.loads((SITE / "_static" / "bncourse-exercises.json").read_text("utf-8"))
    current = json.loads(json.dumps(site_data()))
    differ = sorted(eid for eid in set(written["exercises"]) | set(current["exercises"])
                    if written["exercises"].get(eid) != current["exercises"].get(eid))
    assert written == current, (
        f"_static/bncourse-exercises.json differs from bncourse.exercises.site_data() "
        f"(exercises {differ}): the site was built from other exercises; rebuild it"
    )


def test_every_exercise_has_exactly_one_widget_of_its_kind():
    found = widgets()
    for eid, exercise in EXERCISES.items():
        places = found.get(eid, [])
        assert len(places) == 1, f"{eid}: widgets on {places or 'no page'}"
        assert places[0][1] == exercise.kind
    assert set(found) <= set(EXERCISES), f"widgets for unknown ids {set(found) - set(EXERCISES)}"


@pytest.mark.parametrize("eid", PAGE_IDS)
def test_the_page_and_the_python_checker_agree(eid, tab_of):
    require_fresh(eid)
    tab = tab_of(page_of(eid))
    texts = answers(eid)
    in_page = tab.page.evaluate(
        "([id, texts]) => texts.map((t) => window.bncourseExercises.check(id, t))",
        [eid, texts],
    )
    kind = EXERCISES[eid].kind
    disagreements = []
    for text, got in zip(texts, in_page, strict=True):
        want = check(eid, page_answer(text, kind))
        if (got["status"], got["message"], got["mistake"]) != (want.status, want.message,
                                                               want.mistake):
            disagreements.append(f"{text!r}: page {got['status']} {got['message']!r} "
                                 f"{got['mistake']}; Python {want.status} {want.message!r} "
                                 f"{want.mistake}")
    assert not disagreements, "\n".join(disagreements)
    assert not tab.page_errors and not tab.console_errors


def _right_text(eid: str) -> str:
    exercise = EXERCISES[eid]
    return repr(float(exercise.value)) if exercise.kind == "number" else exercise.answer


def _answer_in_page(tab, eid: str, text: str) -> str:
    widget = tab.page.locator(f'.bncourse-widget[data-exercise-id="{eid}"]')
    widget.scroll_into_view_if_needed()
    if EXERCISES[eid].kind == "number":
        widget.locator("input.bncourse-answer").fill(text)
    else:
        widget.locator(f'input[type=radio][value="{text}"]').check()
    widget.locator("button.bncourse-check-button").click()
    result = widget.locator(".bncourse-result")
    result.wait_for(state="visible")
    return result.inner_text()


@pytest.mark.parametrize("eid", PAGE_IDS)
def test_the_check_button_shows_the_verdict_and_the_message(eid, tab_of):
    require_fresh(eid)
    tab = tab_of(page_of(eid))
    shown = _answer_in_page(tab, eid, _right_text(eid))
    assert "Correct" in shown and check(eid, page_answer(_right_text(eid),
                                                          EXERCISES[eid].kind)).message in shown
    for mistake in EXERCISES[eid].mistakes[:2]:
        text = repr(float(mistake.answer)) if EXERCISES[eid].kind == "number" else mistake.answer
        shown = _answer_in_page(tab, eid, str(text))
        assert "Not yet" in shown and mistake.message in " ".join(shown.split())


@pytest.mark.parametrize("eid", [e for e in PAGE_IDS if len(EXERCISES[e].all_hints) >= 2][:3])
def test_hints_are_revealed_one_at_a_time(eid, tab_of):
    tab = tab_of(page_of(eid))
    widget = tab.page.locator(f'.bncourse-widget[data-exercise-id="{eid}"]')
    button = widget.locator(".bncourse-hint-button")
    hints = EXERCISES[eid].all_hints
    for n in range(1, len(hints) + 1):
        button.click()
        shown = widget.locator(".bncourse-hints li").all_inner_texts()
        assert shown == list(hints[:n])
    assert button.is_disabled()


@pytest.mark.parametrize("eid", FUNCTION_IDS)
def test_function_exercises_say_how_to_run_them(eid):
    page = page_of(eid)
    html = page_html(page)
    note = re.search(rf'data-exercise-id="{re.escape(eid)}"><p class="bncourse-note">(.*?)</p>',
                     html)
    assert note, f"{eid}: no note on {page}"
    assert f"check(&quot;{eid}&quot;" in note.group(1) or f'check("{eid}"' in note.group(1)
    assert "student kit" in note.group(1)


_CONTRAST = r"""
(selector) => {
  const parse = (text) => {
    const m = text.match(/rgba?\(([^)]+)\)/);
    if (m) {
      const p = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
      return [p[0] / 255, p[1] / 255, p[2] / 255, p.length > 3 ? p[3] : 1];
    }
    const c = text.match(/color\(srgb ([^)]+)\)/);
    if (c) {
      const p = c[1].split(/[ /]+/).filter(Boolean).map(Number);
      return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
    }
    throw new Error("cannot read the colour " + text);
  };
  const over = (top, bottom) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat([1]);
  };
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let colour = [1, 1, 1, 1];
    for (const layer of layers.reverse()) colour = over(layer, colour);
    return colour;
  };
  const luminance = (c) => {
    const lin = c.slice(0, 3).map((v) => (v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
  };
  return [...document.querySelectorAll(selector)].filter((el) => el.offsetParent).map((el) => {
    const bg = background(el);
    const fg = over(parse(getComputedStyle(el).color), bg);
    const [hi, lo] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
    return { cls: el.className, ratio: (hi + 0.05) / (lo + 0.05) };
  });
}
"""


@pytest.mark.parametrize("mode", ["light", "dark"])
def test_verdict_boxes_are_readable_in_light_and_dark_mode(mode, tab_of):
    eid = next(e for e in PAGE_IDS if EXERCISES[e].kind == "number" and EXERCISES[e].mistakes)
    tab = tab_of(page_of(eid))
    tab.page.evaluate(f"() => document.documentElement.setAttribute('data-theme', '{mode}')")
    _answer_in_page(tab, eid, _right_text(eid))
    widget = f'.bncourse-widget[data-exercise-id="{eid}"]'
    passed = tab.page.evaluate(_CONTRAST, f"{widget} .bncourse-result")
    _answer_in_page(tab, eid, repr(float(EXERCISES[eid].mistakes[0].answer)))
    failed = tab.page.evaluate(_CONTRAST, f"{widget} .bncourse-result")
    # The verdicts the notebooks printed into the page's cell outputs, and the widget itself.
    printed = tab.page.evaluate(_CONTRAST, ".cell_output .bncourse-check")
    framed = tab.page.evaluate(_CONTRAST, f"{widget} label, {widget} legend")
    boxes = passed + failed + printed + framed
    assert passed and failed and printed, "no verdict box to measure"
    low = [b for b in boxes if b["ratio"] < 4.5]
    assert not low, f"{mode} mode: text below 4.5:1 contrast: {low}"


# ---------------------------------------------------------------- what a person writes

def _vectors(name: str) -> list[dict]:
    from sitepages import ROOT

    return json.loads((ROOT / "tests" / "data" / name).read_text("utf-8"))


def test_the_page_reads_numbers_as_python_does(tab_of):
    """Every vector of tests/data/number_inputs.json (shared with the Python tests): the same
    value, or a refusal with the same message, in the page."""
    eid = next(e for e in PAGE_IDS if EXERCISES[e].kind == "number")
    tab = tab_of(page_of(eid))
    vectors = _vectors("number_inputs.json")
    assert len(vectors) > 50
    got = tab.page.evaluate(
        """([id, inputs]) => inputs.map((text) => {
            const read = window.bncourseExercises.readNumber(
                JSON.parse(document.querySelector(`.bncourse-widget[data-exercise-id="${id}"]`)
                    .dataset.exercise).common, text);
            return {value: read.value === undefined ? null : read.value,
                    negative: read.value !== undefined && Object.is(read.value, -0),
                    message: window.bncourseExercises.check(id, text).message};
        })""",
        [eid, [v["input"] for v in vectors]],
    )
    wrong = []
    for vector, page in zip(vectors, got, strict=True):
        if vector["error"] is None:
            same = page["value"] == vector["value"] and (
                page["negative"] == (vector["value"] == 0 and str(vector["value"]).startswith("-")))
        else:
            same = vector["error"] in page["message"] and (
                page["value"] is None or vector["error"] == "expected a finite number")
        if not same:
            wrong.append(f"{vector['input']!r}: page {page}, expected {vector}")
    assert not wrong, "\n".join(wrong)


def test_the_page_writes_a_near_miss_with_enough_digits(tab_of):
    eid = next(e for e in PAGE_IDS if EXERCISES[e].kind == "number")
    tab = tab_of(page_of(eid))
    vectors = _vectors("number_digits.json")
    got = tab.page.evaluate(
        "(pairs) => pairs.map(([x, v]) => window.bncourseExercises.distinctDigits(x, v))",
        [[v["x"], v["value"]] for v in vectors])
    wrong = [f"{v}: page {g!r}" for v, g in zip(vectors, got, strict=True) if g != v["shown"]]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("eid", PAGE_IDS)
def test_page_messages_point_to_the_hint_button_not_to_a_notebook_call(eid, tab_of):
    tab = tab_of(page_of(eid))
    exercise = EXERCISES[eid]
    generic = True
    if exercise.kind == "number":
        text = "12345.678"
    else:
        wrong = [k for k in sorted(exercise.options) if k != exercise.answer]
        uncatalogued = [k for k in wrong if k not in {m.answer for m in exercise.mistakes}]
        generic = bool(uncatalogued)
        text = (uncatalogued or wrong)[0]
    shown = " ".join(_answer_in_page(tab, eid, text).split())
    assert "Not yet." in shown, shown
    assert "hint(" not in shown, shown
    if generic and len(exercise.all_hints) > 1:
        assert "the Hint button" in shown, shown


def test_widgets_are_announced_and_typed_as_a_person_writes():
    """The verdict region is in the page before the first check (so that a screen reader
    announces the first verdict), new hints are announced, and the number field asks for the
    phone's full keyboard (a decimal keypad has no minus sign on some phones)."""
    pages = {page for places in widgets().values() for page, _ in places}
    for page in sorted(pages):
        html = page_html(page)
        results = re.findall(r'<div class="bncourse-result"[^>]*>', html)
        assert results and all('role="status"' in r and 'aria-live="polite"' in r
                               and "hidden" not in r for r in results), (page, results[:2])
        hints = re.findall(r'<ol class="bncourse-hints"[^>]*>', html)
        assert hints and all('aria-live="polite"' in h for h in hints), (page, hints[:2])
        fields = re.findall(r'<input[^>]*class="bncourse-answer"[^>]*>', html)
        assert all('inputmode="text"' in f for f in fields), (page, fields[:2])


def test_the_verdict_mark_is_not_read_aloud_and_the_title_ends_a_sentence(tab_of):
    eid = next(e for e in PAGE_IDS if EXERCISES[e].kind == "number")
    tab = tab_of(page_of(eid))
    _answer_in_page(tab, eid, "12345.678")
    mark = tab.page.locator(f'.bncourse-widget[data-exercise-id="{eid}"] .bncourse-mark')
    assert mark.get_attribute("aria-hidden") == "true"
    title = tab.page.locator(f'.bncourse-widget[data-exercise-id="{eid}"] .bncourse-result strong')
    assert title.inner_text().strip().endswith("Not yet.")
