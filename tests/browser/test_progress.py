"""The learner's progress, kept in the browser: verdicts that survive a reload, the "Your
progress" page, export, import and reset, the site from ``file://``, and a browser that
refuses storage."""

from __future__ import annotations

import json
import re

import pytest
from sitepages import PHONE, SITE, TIMEOUT_MS, VIEWPORT, page_html, site_pages

from bncourse.exercises import EXERCISES

PROGRESS = "book/progress.html"
CHAPTER = "book/04_invariance.html"
KEY = "bncourse-progress"


def _exercises_in_the_book() -> set[str]:
    """Every exercise that a page of the book holds (its widget or its note)."""
    found = set()
    for page in site_pages():
        if page != PROGRESS:
            found |= set(re.findall(r'class="bncourse-widget[^"]*"[^>]*?data-exercise-id="([^"]+)"',
                                    page_html(page)))
    assert found, "no exercise on any page"
    return found


def _widget_ids(tab) -> list[str]:
    return tab.page.evaluate("""() => [...document.querySelectorAll(
        '.bncourse-widget[data-exercise]')].map((w) => w.dataset.exerciseId)""")


def _answer(page, eid: str, text: str) -> str:
    widget = page.locator(f'.bncourse-widget[data-exercise-id="{eid}"]')
    if EXERCISES[eid].kind == "number":
        widget.locator("input.bncourse-answer").fill(text)
    else:
        widget.locator(f'input[type=radio][value="{text}"]').check()
    widget.locator("button.bncourse-check-button").click()
    return widget.locator(".bncourse-result").inner_text()


def _right(eid: str) -> str:
    exercise = EXERCISES[eid]
    return repr(float(exercise.value)) if exercise.kind == "number" else exercise.answer


def _states(page) -> dict[str, str]:
    page.wait_for_function("() => document.querySelector('.bncourse-progress-total')"
                           ".textContent.length > 0")
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
        'tr[data-exercise-id]')].map((r) => [r.dataset.exerciseId,
        r.querySelector('.bncourse-progress-state').textContent]))""")


def _number_and_choice(tab) -> tuple[str, str]:
    ids = _widget_ids(tab)
    number = next(e for e in ids if EXERCISES[e].kind == "number")
    choice = next(e for e in ids if EXERCISES[e].kind == "choice")
    return number, choice


def test_verdicts_survive_a_reload_and_show_on_the_progress_page(open_tab, tmp_path):
    tab = open_tab(CHAPTER)
    page = tab.page
    number, choice = _number_and_choice(tab)
    assert "Correct" in _answer(page, number, _right(number))
    wrong = next(k for k in sorted(EXERCISES[choice].options) if k != EXERCISES[choice].answer)
    assert "Not yet" in _answer(page, choice, wrong)
    page.reload(wait_until="load")
    widget = page.locator(f'.bncourse-widget[data-exercise-id="{number}"]')
    assert widget.locator("input.bncourse-answer").input_value() == _right(number)
    assert "Correct" in widget.locator(".bncourse-result").inner_text()
    other = page.locator(f'.bncourse-widget[data-exercise-id="{choice}"]')
    assert other.locator(f'input[value="{wrong}"]').is_checked()
    assert "Not yet" in other.locator(".bncourse-result").inner_text()

    page.goto(tab.base_url + PROGRESS, wait_until="load")
    states = _states(page)
    assert set(states) == _exercises_in_the_book(), "the progress page lists other exercises"
    assert states[number] == "correct" and states[choice] == "not yet"
    assert sum(s == "not attempted" for s in states.values()) == len(states) - 2
    heading = page.locator('.bncourse-progress-chapter[data-chapter="4"] h2').inner_text()
    title = re.search(r"<h1>(.*?)<", page_html(CHAPTER)).group(1).strip()
    assert heading.endswith(title), f"chapter 4 is headed {heading!r}, its page {title!r}"
    count = page.locator('.bncourse-progress-chapter[data-chapter="4"] '
                         '.bncourse-progress-count').inner_text()
    assert count.startswith("1 of ") and "1 not yet" in count, count
    # The row links to the exercise on its chapter page.
    href = page.locator(f'tr[data-exercise-id="{number}"] a').get_attribute("href")
    assert href.startswith("04_invariance.html#"), href
    anchor = href.split("#", 1)[1]
    page.goto(tab.base_url + "book/" + href, wait_until="load")
    assert page.evaluate("(id) => document.getElementById(id) !== null", anchor)

    # A function exercise is marked by the learner.
    page.goto(tab.base_url + PROGRESS, wait_until="load")
    function = next(e for e, x in EXERCISES.items()
                    if x.kind == "function" and e in states)
    page.locator(f'tr[data-exercise-id="{function}"] input.bncourse-progress-mark').check()
    assert _states(page)[function] == "correct"

    # Export, then import into a fresh profile.
    with page.expect_download() as download:
        page.click(".bncourse-progress-export")
    saved = tmp_path / "progress.json"
    download.value.save_as(saved)
    exported = json.loads(saved.read_text("utf-8"))
    assert exported["version"] == 1
    assert exported["exercises"][number]["status"] == "correct"
    assert exported["exercises"][number]["answer"] == _right(number)
    assert exported["exercises"][function] == {**exported["exercises"][function],
                                               "status": "correct", "answer": None}
    tab.close()

    fresh = open_tab(PROGRESS)
    assert set(_states(fresh.page).values()) == {"not attempted"}
    fresh.page.set_input_files(".bncourse-progress-import", str(saved))
    fresh.page.wait_for_function("() => document.querySelector('.bncourse-progress-message')"
                                 ".textContent.startsWith('Imported')")
    restored = _states(fresh.page)
    assert restored[number] == "correct" and restored[choice] == "not yet"
    assert restored[function] == "correct"
    fresh.page.goto(fresh.base_url + CHAPTER, wait_until="load")
    widget = fresh.page.locator(f'.bncourse-widget[data-exercise-id="{number}"]')
    assert "Correct" in widget.locator(".bncourse-result").inner_text()

    # Reset forgets everything.
    fresh.page.goto(fresh.base_url + PROGRESS, wait_until="load")
    fresh.page.once("dialog", lambda dialog: dialog.accept())
    fresh.page.click(".bncourse-progress-reset")
    assert set(_states(fresh.page).values()) == {"not attempted"}
    assert fresh.page.evaluate(f"() => localStorage.getItem('{KEY}')") is None
    fresh.close()


def test_an_import_of_a_bad_file_says_what_is_wrong(open_tab, tmp_path):
    tab = open_tab(PROGRESS)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 2, "exercises": {}}), encoding="utf-8")
    tab.page.set_input_files(".bncourse-progress-import", str(bad))
    tab.page.wait_for_function("() => document.querySelector('.bncourse-progress-message')"
                               ".textContent.length > 0")
    message = tab.page.locator(".bncourse-progress-message").inner_text()
    tab.close()
    assert "version 2" in message and "version 1" in message, message


def test_an_import_keeps_the_later_verdict_and_counts_unknown_ids(open_tab, tmp_path):
    tab = open_tab(CHAPTER)
    number, _ = _number_and_choice(tab)
    _answer(tab.page, number, _right(number))
    tab.page.goto(tab.base_url + PROGRESS, wait_until="load")
    older = tmp_path / "older.json"
    older.write_text(json.dumps({"version": 1, "exercises": {
        number: {"status": "not yet", "answer": "3", "updated": "2001-01-01T00:00:00Z"},
        "nowhere.unknown": {"status": "correct", "answer": None,
                            "updated": "2001-01-01T00:00:00Z"}}}), encoding="utf-8")
    tab.page.set_input_files(".bncourse-progress-import", str(older))
    tab.page.wait_for_function("() => document.querySelector('.bncourse-progress-message')"
                               ".textContent.startsWith('Imported')")
    message = tab.page.locator(".bncourse-progress-message").inner_text()
    states = _states(tab.page)
    tab.close()
    assert states[number] == "correct", "an older imported verdict replaced a newer one"
    assert "1 unknown" in message, message


_NO_STORAGE = """
Object.defineProperty(window, "localStorage", {
  configurable: true,
  get() { throw new DOMException("storage is disabled", "SecurityError"); },
});
"""


def test_the_site_works_without_storage_and_says_so_once(browser, base_url):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(_NO_STORAGE)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(base_url + CHAPTER, wait_until="load")
    ids = page.evaluate("""() => [...document.querySelectorAll(
        '.bncourse-widget[data-exercise]')].map((w) => w.dataset.exerciseId)""")
    number = next(e for e in ids if EXERCISES[e].kind == "number")
    assert "Correct" in _answer(page, number, _right(number))
    _answer(page, number, "0")
    notes = page.locator(".bncourse-storage-note")
    assert notes.count() == 1, f"{notes.count()} notes about storage"
    assert "not kept" in notes.inner_text()
    page.goto(base_url + PROGRESS, wait_until="load")
    assert page.locator(".bncourse-storage-note").count() == 1
    assert page.locator(".bncourse-progress-export").is_disabled()
    context.close()
    own = [e for e in errors if "bncourse" in e or "progress" in e]
    assert not own, own


@pytest.mark.parametrize("viewport", [VIEWPORT, PHONE], ids=["desktop", "phone"])
def test_progress_survives_a_reload_from_file_urls(browser, viewport):
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((SITE / CHAPTER).as_uri(), wait_until="load")
    ids = page.evaluate("""() => [...document.querySelectorAll(
        '.bncourse-widget[data-exercise]')].map((w) => w.dataset.exerciseId)""")
    number = next(e for e in ids if EXERCISES[e].kind == "number")
    assert "Correct" in _answer(page, number, _right(number))
    page.reload(wait_until="load")
    widget = page.locator(f'.bncourse-widget[data-exercise-id="{number}"]')
    assert "Correct" in widget.locator(".bncourse-result").inner_text()
    page.goto((SITE / PROGRESS).as_uri(), wait_until="load")
    assert _states(page)[number] == "correct"
    context.close()
    assert not errors, errors


def test_the_progress_page_on_a_phone_in_dark_mode(open_tab, screenshots):
    """A learner's progress page on a phone: it fits the screen; its screenshot is kept."""
    tab = open_tab(CHAPTER, viewport=PHONE, mode="dark")
    page = tab.page
    number, choice = _number_and_choice(tab)
    _answer(page, number, _right(number))
    _answer(page, choice, next(k for k in sorted(EXERCISES[choice].options)
                               if k != EXERCISES[choice].answer))
    page.goto(tab.base_url + PROGRESS, wait_until="load")
    _states(page)
    shot = screenshots / "book-progress-answered-390-dark.png"
    page.screenshot(path=str(shot), full_page=True)
    wide = page.evaluate("() => document.documentElement.scrollWidth")
    theme = page.evaluate("() => document.documentElement.dataset.theme")
    tab.close()
    assert theme == "dark"
    assert wide <= PHONE["width"], f"the progress page is {wide} px wide on a phone"
