"""The built site, opened in a real browser (headless Chromium) from a local static server.

Every page must load with no console error and no request to another host, its math must
be typeset by the site's own MathJax, and its images must have loaded; every solution must
be folded until clicked; the search page must find the course's words. A full-page
screenshot of every page of the book is written to ``_build/screenshots/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from sitepages import (
    SITE,
    TIMEOUT_MS,
    VIEWPORT,
    has_solutions,
    is_document,
    page_html,
    screenshot_name,
    site_pages,
)

# At most this many scripts per page in the HTML itself: the theme's, Sphinx's and MathJax's
# entry point. MathJax's own tree must never be injected script by script.
MAX_SCRIPTS_PER_PAGE = 25

_WAIT_FOR_IMAGES = """
async (timeout) => {
  for (const img of document.images) img.loading = "eager";
  const pending = [...document.images].filter((img) => !img.complete).map(
    (img) => new Promise((done) => {
      img.addEventListener("load", done, { once: true });
      img.addEventListener("error", done, { once: true });
    }));
  await Promise.race([Promise.all(pending), new Promise((done) => setTimeout(done, timeout))]);
}
"""

_FACTS = r"""
() => {
  const skipTags = new Set(["PRE", "CODE", "SCRIPT", "STYLE", "TEXTAREA", "NOSCRIPT",
                            "MJX-CONTAINER"]);
  const skipped = (node) => {
    for (let el = node.parentElement; el; el = el.parentElement) {
      if (skipTags.has(el.tagName) || el.classList.contains("highlight")) return true;
    }
    return false;
  };
  const rawTex = /\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{/;
  const raw = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (rawTex.test(node.textContent) && !skipped(node)) {
      raw.push(node.textContent.trim().slice(0, 120));
    }
  }
  const math = [...document.querySelectorAll(".math")];
  return {
    url: location.href,
    title: document.title,
    mathjax: window.MathJax && window.MathJax.version ? window.MathJax.version : null,
    math: math.length,
    typeset: math.filter((el) => el.querySelector("mjx-container")).length,
    untypeset: math.filter((el) => !el.querySelector("mjx-container"))
                   .slice(0, 5).map((el) => el.textContent.trim().slice(0, 80)),
    mathErrors: [...document.querySelectorAll("mjx-merror")]
                   .map((el) => el.getAttribute("data-mjx-error") || el.textContent),
    rawTex: raw,
    images: [...document.images].map((img) => ({
      src: img.getAttribute("src"), loaded: img.complete && img.naturalWidth > 0,
    })),
  };
}
"""


@dataclass
class Visit:
    """What one page did in the browser, from loading to being fully typeset."""

    page: str
    facts: dict
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    off_host: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    mathjax_error: str | None = None
    screenshot: Path | None = None


_REDIRECT = re.compile(r'<meta\s+http-equiv="refresh"', re.IGNORECASE)


def _visit(open_tab, page: str, screenshots: Path) -> Visit:
    tab = open_tab(page, mode="light")
    mathjax_error = None
    try:
        if _REDIRECT.search(page_html(page)):
            # A page that only forwards (the site's index.html): follow it, then check.
            tab.page.wait_for_url(lambda url: not url.endswith("/" + page), wait_until="load")
        if tab.page.evaluate("() => document.querySelector('.math') !== null"):
            try:
                tab.page.wait_for_function(
                    "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                    timeout=TIMEOUT_MS,
                )
                tab.page.evaluate("() => MathJax.startup.promise.then(() => true)")
            except PlaywrightError as error:
                mathjax_error = f"MathJax did not start: {error.message.splitlines()[0]}"
        tab.page.evaluate(_WAIT_FOR_IMAGES, TIMEOUT_MS // 2)
        tab.page.wait_for_load_state("networkidle")
        facts = tab.page.evaluate(_FACTS)
        shot = None
        if is_document(page):
            shot = screenshots / screenshot_name(page, VIEWPORT["width"], "light")
            tab.page.screenshot(path=str(shot), full_page=True)
        return Visit(page, facts, list(tab.console_errors), list(tab.page_errors),
                     list(tab.off_host), list(tab.failed), mathjax_error, shot)
    finally:
        tab.close()


@pytest.fixture(scope="session")
def visit(open_tab, screenshots):
    """``visit(page)``: the page's Visit, loaded once per session and shared by the tests."""
    cache: dict[str, Visit] = {}

    def _get(page: str) -> Visit:
        if page not in cache:
            cache[page] = _visit(open_tab, page, screenshots)
        return cache[page]

    return _get


def _listing(items: list[str]) -> str:
    return "\n  ".join(items[:20]) + ("\n  ..." if len(items) > 20 else "")


# ---------------------------------------------------------------- every page, in the browser


def test_page_loads_without_console_errors(page, visit):
    seen = visit(page)
    problems = seen.console_errors + [f"uncaught: {error}" for error in seen.page_errors]
    assert not problems, f"{page} logged errors in the browser console:\n  {_listing(problems)}"


def test_page_requests_nothing_from_another_host(page, visit):
    seen = visit(page)
    assert not seen.off_host, (
        f"{page} asked for resources from outside the site (blocked here, so it would break "
        f"offline):\n  {_listing(seen.off_host)}"
    )


def test_every_local_request_of_the_page_succeeds(page, visit):
    seen = visit(page)
    assert not seen.failed, f"{page} has requests that failed:\n  {_listing(seen.failed)}"


def test_every_image_has_loaded(page, visit):
    images = visit(page).facts["images"]
    broken = [image["src"] for image in images if not image["loaded"]]
    assert not broken, (
        f"{len(broken)} of {len(images)} images on {page} did not load (natural width 0):"
        f"\n  {_listing(broken)}"
    )


def test_no_raw_tex_is_left_on_the_page(page, visit):
    raw = visit(page).facts["rawTex"]
    assert not raw, (
        f"{page} shows TeX delimiters as text ($$, \\(, \\[ or \\begin outside code), so some "
        f"math was not typeset:\n  {_listing(raw)}"
    )


def test_math_is_typeset_by_the_sites_own_mathjax(math_page, visit):
    seen = visit(math_page)
    assert seen.mathjax_error is None, f"{math_page}: {seen.mathjax_error}"
    facts = seen.facts
    assert facts["mathjax"], f"{math_page} has math but MathJax is not on the page"
    assert facts["typeset"] == facts["math"], (
        f"MathJax typeset {facts['typeset']} of the {facts['math']} formulas on {math_page}; "
        f"left as text, for example:\n  {_listing(facts['untypeset'])}"
    )
    assert not facts["mathErrors"], (
        f"MathJax could not render some TeX on {math_page}:\n  {_listing(facts['mathErrors'])}"
    )


# ---------------------------------------------------------------- the book's own pages


def test_every_page_of_the_book_has_a_full_page_screenshot(document, visit):
    shot = visit(document).screenshot
    assert shot is not None and shot.is_file() and shot.stat().st_size > 10_000, (
        f"no usable screenshot of {document} at {shot}"
    )
    width = int.from_bytes(shot.read_bytes()[16:20], "big")
    assert width >= 1000, f"the screenshot of {document} is {width} px wide, not the viewport"


def test_the_book_has_pages_besides_the_generated_ones():
    documents = [page for page in site_pages() if is_document(page)]
    assert len(documents) >= 2, f"only {documents} were built from the book's sources"


def test_solutions_are_folded_and_open_on_click(solution_page, open_tab):
    tab = open_tab(solution_page)
    try:
        solutions = tab.page.locator("div.solution")
        count = solutions.count()
        assert count > 0, f"no solution block rendered on {solution_page}"
        for index in range(count):
            solution = solutions.nth(index)
            name = f"solution {index + 1} of {count} on {solution_page}"
            body = solution.locator(":scope > :not(.admonition-title)").first
            assert body.is_hidden(), (
                f"{name} is open when the page loads: give it `:class: dropdown`"
            )
            # The chevron, not the middle of the title: the title holds a link to the exercise.
            solution.locator(":scope > .admonition-title .toggle-button").click()
            body.wait_for(state="visible", timeout=5_000)
            assert body.is_visible(), f"{name} did not open when its title was clicked"
        problems = tab.console_errors + tab.page_errors
        assert not problems, f"clicking the solutions of {solution_page} logged errors:\n  " + (
            _listing(problems)
        )
    finally:
        tab.close()


def test_the_site_has_a_solution_dropdown():
    assert any(has_solutions(page) for page in site_pages()), (
        "no page of the site has an exercise solution, so the dropdown was never tested"
    )


def test_search_finds_momentum(open_tab):
    tab = open_tab("search.html?q=momentum")
    try:
        results = tab.page.locator("#search-results ul.search li")
        results.first.wait_for(state="attached", timeout=TIMEOUT_MS)
        titles = results.locator("a").all_inner_texts()
        assert titles, "the search page found nothing for 'momentum'"
        problems = tab.console_errors + tab.page_errors + tab.off_host + tab.failed
        assert not problems, f"the search page had problems:\n  {_listing(problems)}"
    finally:
        tab.close()


# ---------------------------------------------------------------- the HTML itself

_ASSET = re.compile(
    r"<(?:script|img|iframe|source|video|audio)\b[^>]*\bsrc=\"([^\"]+)\""
    r"|<link\b[^>]*\bhref=\"([^\"]+)\"[^>]*>",
)


def test_page_html_references_no_asset_on_another_host(page):
    html = page_html(page)
    remote = []
    for match in _ASSET.finditer(html):
        url = match.group(1) or match.group(2)
        tag = match.group(0)
        if tag.startswith("<link") and not re.search(r'rel="(stylesheet|preload|icon|'
                                                     r'modulepreload|prefetch)"', tag):
            continue
        if "://" in url or url.startswith("//"):
            remote.append(url)
    assert not remote, f"{page} loads assets from other hosts:\n  {_listing(remote)}"


def test_page_loads_a_handful_of_scripts(page):
    scripts = re.findall(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", page_html(page))
    mathjax = [src for src in scripts if "/mathjax/" in src]
    assert len(mathjax) <= 1, f"{page} includes MathJax's tree script by script: {mathjax}"
    assert len(scripts) <= MAX_SCRIPTS_PER_PAGE, (
        f"{page} loads {len(scripts)} scripts:\n  {_listing(scripts)}"
    )


def test_site_serves_its_own_mathjax():
    entry = SITE / "_static" / "mathjax" / "tex-mml-chtml.js"
    assert entry.is_file(), f"MathJax is missing from the built site ({entry})"
    fonts = list((SITE / "_static" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))
    assert fonts, "MathJax's web fonts are missing from the built site"
