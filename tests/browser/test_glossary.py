"""The glossary: every term defined on the glossary page, linked from the chapters, and its
definition shown beside the link on hover and on keyboard focus, from the site's own files."""

from __future__ import annotations

import re

from sitepages import PHONE, SITE, TIMEOUT_MS, page_html, site_pages

GLOSSARY = "book/glossary.html"
# The terms whose meaning differs between frameworks and papers, which the glossary must hold.
TERMS = ("batch statistics", "running statistics", "population statistics", "momentum", "eps",
         "affine parameters", "buffers", "non-trainable weights", "ghost batch", "folding",
         "precise BN", "synchronized BN", "internal covariate shift", "effective learning rate")
_TERM_LINK = re.compile(r'<a class="reference internal" href="([^"#]*glossary\.html)?#(term-[^"]+)"'
                        r'><span class="xref std std-term">')


def _anchor(term: str) -> str:
    return "term-" + re.sub(r"[^A-Za-z0-9]+", "-", term).strip("-")


def _linked() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for page in site_pages():
        if page != GLOSSARY:
            for _, anchor in _TERM_LINK.findall(page_html(page)):
                found.setdefault(anchor, []).append(page)
    return found


def test_the_glossary_defines_every_term():
    html = page_html(GLOSSARY)
    defined = set(re.findall(r'<dt id="(term-[^"]+)"', html))
    missing = [t for t in TERMS if _anchor(t) not in defined]
    assert not missing, f"the glossary does not define {missing}"


def test_every_term_is_linked_from_a_chapter():
    linked = _linked()
    defined = set(re.findall(r'<dt id="(term-[^"]+)"', page_html(GLOSSARY)))
    unlinked = sorted(defined - set(linked))
    assert not unlinked, f"terms no chapter links to: {unlinked}"
    unknown = sorted(set(linked) - defined)
    assert not unknown, f"term links to no glossary entry: {unknown}"


def test_the_definitions_are_served_by_the_site():
    script = SITE / "_static" / "course-glossary.js"
    assert script.is_file(), "no _static/course-glossary.js"
    text = script.read_text("utf-8")
    for term in TERMS:
        assert f'"{_anchor(term)}"' in text, f"{term} has no definition in {script.name}"
    for page, _ in ((p, None) for p in site_pages() if _TERM_LINK.search(page_html(p))):
        assert "_static/course-glossary.js" in page_html(page), f"{page} does not load it"


def _first_term_page() -> str:
    return next(p for p in sorted(_linked().get(_anchor("momentum"), [])))


def _tip_text(page) -> str:
    return page.evaluate("""() => {
        const tip = document.getElementById("course-term-tip");
        return tip && !tip.hidden ? tip.innerText : "";
    }""")


def test_hovering_a_term_shows_its_definition(open_tab):
    chapter = _first_term_page()
    tab = open_tab(chapter)
    page = tab.page
    link = page.locator('.bd-article a.reference.internal:has(.std-term)').filter(
        has_text=re.compile("^momentum$", re.I)).first
    link.scroll_into_view_if_needed()
    link.hover()
    page.wait_for_function("() => { const t = document.getElementById('course-term-tip');"
                           " return t && !t.hidden; }", timeout=TIMEOUT_MS)
    text = _tip_text(page)
    described = link.get_attribute("aria-describedby")
    page.mouse.move(0, 0)
    page.wait_for_timeout(600)
    after = _tip_text(page)
    tab.close()
    assert "momentum" in text.lower() and "0.99" in text, text
    assert described == "course-term-tip"
    assert after == "", "the definition stays after the pointer has left"
    assert not tab.off_host, tab.off_host


def test_keyboard_focus_shows_the_definition_and_escape_hides_it(open_tab, screenshots):
    chapter = _first_term_page()
    tab = open_tab(chapter, viewport=PHONE, mode="dark")
    page = tab.page
    page.wait_for_function("() => !window.MathJax || !MathJax.startup || "
                           "MathJax.startup.promise", timeout=TIMEOUT_MS)
    found = None
    for _ in range(400):
        page.keyboard.press("Tab")
        found = page.evaluate("""() => {
            const el = document.activeElement;
            return el && el.matches('a.reference.internal') && el.querySelector('.std-term')
                ? el.textContent : null;
        }""")
        if found:
            break
    assert found, "no term link is reached by Tab"
    page.wait_for_timeout(300)
    text = _tip_text(page)
    box = page.evaluate("""() => {
        const r = document.getElementById('course-term-tip').getBoundingClientRect();
        return {left: r.left, right: r.right, width: document.documentElement.clientWidth};
    }""")
    page.screenshot(path=str(screenshots / "glossary-tooltip-390-dark.png"))
    page.keyboard.press("Escape")
    after = _tip_text(page)
    tab.close()
    assert found.strip().lower() in text.lower(), (found, text)
    assert box["left"] >= 0 and box["right"] <= box["width"], f"the definition is cut off: {box}"
    assert after == ""
