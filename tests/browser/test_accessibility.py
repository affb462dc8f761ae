"""An accessibility audit of every page, and the site operated by keyboard alone.

axe-core (installed from the npm registry by ``make setup``, pinned in package-lock.json as a
development dependency) is injected into each page by the test; the site itself never ships
or loads it. Every page is audited at the desktop and the phone width, in light and in dark
mode; a serious or critical violation fails the test. The counts of every violation, minor
ones included, go to ``axe-report.txt`` beside the screenshots (``_build/screenshots``).
"""

from __future__ import annotations

import json
import re

import pytest
from sitepages import MODES, PHONE, ROOT, TIMEOUT_MS, VIEWPORT, page_html

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")
WIDTHS = {"desktop": VIEWPORT, "phone": PHONE}
_REPORT: dict[str, list[dict]] = {}


def _settle(page) -> None:
    if page.evaluate("() => document.querySelector('.math') !== null"):
        page.wait_for_function("() => window.MathJax && MathJax.startup && "
                               "MathJax.startup.promise", timeout=TIMEOUT_MS)
        page.evaluate("() => MathJax.startup.promise.then(() => true)")
    page.wait_for_load_state("networkidle")


def audit(page) -> list[dict]:
    """axe-core's violations on the page as it is now: rule, impact, node count, targets."""
    if not AXE.is_file():
        pytest.fail(f"axe-core is not installed at {AXE}: run `make setup` (npm ci)")
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.add_script_tag(path=str(AXE))
    results = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ["violations"]});
        return r.violations.map((v) => ({id: v.id, impact: v.impact, count: v.nodes.length,
            targets: v.nodes.slice(0, 3).map((n) => n.target.join(" "))}));
    }""")
    return results


def _write_report(folder) -> None:
    lines = []
    for key in sorted(_REPORT):
        found = _REPORT[key]
        total = sum(v["count"] for v in found)
        blocking = sum(v["count"] for v in found if v["impact"] in BLOCKING)
        rules = ", ".join(f"{v['id']} ({v['impact']}) x{v['count']}" for v in found)
        lines.append(f"{key}: {total} nodes, {blocking} serious or critical"
                     + (f": {rules}" if rules else ""))
    (folder / "axe-report.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_axe_finds_no_serious_or_critical_violation(page, width, mode, open_tab, screenshots):
    tab = open_tab(page, viewport=WIDTHS[width], mode=mode)
    try:
        if re.search(r'<meta\s+http-equiv="refresh"', page_html(page), re.IGNORECASE):
            # A page that only forwards (the site's index.html): audit where it leads.
            tab.page.wait_for_url(lambda url: not url.endswith("/" + page), wait_until="load")
        _settle(tab.page)
        found = audit(tab.page)
    finally:
        tab.close()
    _REPORT[f"{page} {width} {mode}"] = found
    _write_report(screenshots)
    blocking = [v for v in found if v["impact"] in BLOCKING]
    assert not blocking, f"{page} ({width}, {mode}):\n" + json.dumps(blocking, indent=1)


def test_axe_finds_no_violation_in_the_interactive_states(open_tab):
    """A chapter with every solution open, every widget answered and every hint shown."""
    tab = open_tab("book/04_invariance.html", mode="dark")
    page = tab.page
    _settle(page)
    page.evaluate("""() => {
        document.querySelectorAll("div.solution .toggle-button").forEach((b) => b.click());
        document.querySelectorAll(".bncourse-widget[data-exercise]").forEach((w) => {
            const field = w.querySelector("input.bncourse-answer");
            if (field) field.value = "1/3";
            const radio = w.querySelector("input[type=radio]");
            if (radio) radio.checked = true;
            w.querySelector("form").requestSubmit();
            const hint = w.querySelector(".bncourse-hint-button");
            while (hint && !hint.disabled) hint.click();
        });
    }""")
    found = audit(page)
    tab.close()
    blocking = [v for v in found if v["impact"] in BLOCKING]
    assert not blocking, json.dumps(blocking, indent=1)


# ---------------------------------------------------------------- keyboard


def _tab_to(page, predicate: str, limit: int = 400) -> dict:
    """Press Tab until the focused element satisfies ``predicate`` (a JS expression on
    ``el``); return what is focused then, with whether a focus indicator is drawn."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        info = page.evaluate(f"""() => {{
            const el = document.activeElement;
            if (!el || el === document.body) return null;
            if (!({predicate})) return null;
            const s = getComputedStyle(el);
            const ring = (s.outlineStyle !== "none" && parseFloat(s.outlineWidth) > 0)
                || (s.boxShadow && s.boxShadow !== "none");
            return {{tag: el.tagName, cls: el.className, text: el.textContent.trim().slice(0, 40),
                     ring: ring}};
        }}""")
        if info:
            return info
    raise AssertionError(f"no element matching {predicate} within {limit} Tab presses")


def test_formulas_are_not_tab_stops(open_tab):
    tab = open_tab("book/04_invariance.html")
    page = tab.page
    _settle(page)
    stops = page.evaluate("""() => [...document.querySelectorAll("mjx-container")]
        .filter((m) => m.tabIndex >= 0 && !m.classList.contains("course-overflows")).length""")
    total = page.evaluate("() => document.querySelectorAll('mjx-container').length")
    tab.close()
    assert total > 100, f"only {total} formulas: is MathJax typesetting the page?"
    assert stops == 0, f"{stops} of {total} formulas are tab stops"


def test_the_first_exercise_is_reached_early_by_keyboard(open_tab):
    tab = open_tab("book/04_invariance.html")
    page = tab.page
    _settle(page)
    count = page.evaluate("""() => {
        const all = [...document.querySelectorAll(
            "a[href], button, input, select, textarea, [tabindex], summary")]
            .filter((el) => el.tabIndex >= 0 && !el.disabled && el.offsetParent !== null);
        const first = document.querySelector("input.bncourse-answer, .bncourse-options input");
        return all.indexOf(first);
    }""")
    tab.close()
    assert 0 <= count < 60, f"the first exercise field is tab stop {count + 1}"


def test_every_control_is_reached_by_keyboard_with_a_focus_ring(open_tab):
    tab = open_tab("book/04_invariance.html")
    page = tab.page
    _settle(page)
    checks = {
        "sidebar toggle": "el.matches('.primary-toggle')",
        "download menu": "el.closest('.dropdown-download-buttons') !== null",
        "answer field": "el.matches('input.bncourse-answer')",
        "check button": "el.matches('.bncourse-check-button')",
        "hint button": "el.matches('.bncourse-hint-button')",
        "solution toggle": "el.closest('div.solution') !== null",
    }
    missing = []
    for name, predicate in checks.items():
        page.evaluate("() => { document.activeElement && document.activeElement.blur(); "
                      "window.scrollTo(0, 0); }")
        page.focus("body")
        info = _tab_to(page, predicate)
        if not info["ring"]:
            missing.append(f"{name}: {info}")
    tab.close()
    assert not missing, "no visible focus indicator:\n" + "\n".join(missing)


def test_a_number_exercise_is_answered_and_hinted_by_keyboard(open_tab):
    tab = open_tab("book/04_invariance.html")
    page = tab.page
    _settle(page)
    _tab_to(page, "el.matches('input.bncourse-answer')")
    widget = page.evaluate_handle("() => document.activeElement.closest('.bncourse-widget')")
    page.keyboard.type("0")
    page.keyboard.press("Enter")
    verdict = widget.evaluate("w => w.querySelector('.bncourse-result').textContent")
    assert re.search(r"Not yet|Correct", verdict), verdict
    page.keyboard.press("Tab")  # Check
    page.keyboard.press("Tab")  # Hint
    focused = page.evaluate("() => document.activeElement.className")
    assert "bncourse-hint-button" in focused, focused
    hints = widget.evaluate("w => JSON.parse(w.dataset.exercise).exercise.hints.length")
    for _ in range(hints):
        page.keyboard.press("Enter")
    shown = widget.evaluate("w => w.querySelectorAll('.bncourse-hints li').length")
    where = page.evaluate("() => document.activeElement === document.body")
    tab.close()
    assert shown == hints, f"{shown} of {hints} hints shown by pressing Enter"
    assert not where, "focus fell to the page body after the last hint"


def test_a_choice_exercise_is_answered_by_keyboard(open_tab):
    tab = open_tab("book/04_invariance.html")
    page = tab.page
    _settle(page)
    _tab_to(page, "el.matches('.bncourse-options input')")
    widget = page.evaluate_handle("() => document.activeElement.closest('.bncourse-widget')")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    verdict = widget.evaluate("w => w.querySelector('.bncourse-result').textContent")
    tab.close()
    assert re.search(r"Not yet|Correct", verdict), verdict


def test_a_solution_opens_by_keyboard(open_tab):
    tab = open_tab("book/04_invariance.html")
    page = tab.page
    _settle(page)
    _tab_to(page, "el.closest('div.solution') !== null")
    page.keyboard.press("Enter")
    page.wait_for_timeout(200)
    opened = page.evaluate("""() => {
        const s = document.activeElement.closest('div.solution');
        return s && !s.classList.contains('toggle-hidden');
    }""")
    tab.close()
    assert opened, "Enter on the solution's title did not open it"


def test_the_phone_drawers_open_close_and_navigate_by_keyboard(open_tab):
    tab = open_tab("book/04_invariance.html", viewport=PHONE)
    page = tab.page
    _settle(page)
    for toggle, drawer in ((".primary-toggle", "#pst-primary-sidebar-modal"),
                           (".secondary-toggle", "#pst-secondary-sidebar-modal")):
        _tab_to(page, f"el.matches('{toggle}')")
        page.keyboard.press("Enter")
        page.wait_for_timeout(300)
        dialog = page.locator(drawer)
        assert dialog.evaluate("d => d.open"), f"{toggle} did not open its drawer"
        assert dialog.evaluate("d => d.contains(document.activeElement)"), \
            f"focus is not inside the {drawer} drawer once it is open"
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
        assert not dialog.evaluate("d => d.open"), f"Escape did not close the {drawer} drawer"
    # A section link of the contents drawer closes the drawer and moves to the section.
    page.click(".secondary-toggle")
    page.wait_for_timeout(300)
    dialog = page.locator("#pst-secondary-sidebar-modal")
    link = dialog.locator("a.nav-link").nth(1)
    target = link.get_attribute("href")
    link.focus()
    page.keyboard.press("Enter")
    page.wait_for_timeout(400)
    still_open = dialog.evaluate("d => d.open")
    where = page.evaluate("() => location.hash")
    tab.close()
    assert not still_open, "the contents drawer stays open after a section is chosen"
    assert where == target, f"went to {where}, not {target}"

