"""The site as a reader meets it: on a phone and a desktop, in light and dark mode.

Screenshots of every page of the book at 1280 and 390 px in both modes go to
``_build/screenshots/``; the page weights go to ``_build/screenshots/page-weight.txt``.
Checked on every page: nothing wider than a phone's screen, wide equations that scroll with
a visible cue, figures sharp enough for high-density screens and described in words, text in
exercise, proof and verdict boxes at 4.5:1 contrast in both modes, the navigation drawers,
and the small things a careful reader notices.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sitepages import (
    MODES,
    PHONE,
    ROOT,
    SITE,
    TIMEOUT_MS,
    VIEWPORT,
    is_document,
    page_html,
    screenshot_name,
    site_pages,
)

DOCUMENTS = [page for page in site_pages() if is_document(page)]
CHAPTERS = [page for page in DOCUMENTS if re.match(r"book/\d\d_", page)]
# What one page may load, uncompressed, on a first visit (HTML, styles, scripts, fonts, images).
PAGE_BYTES_BUDGET = 3_500_000
PAGE_REQUESTS_BUDGET = 45
MIN_CONTRAST = 4.5
KIT_ZIP = SITE / "_downloads" / "bncourse-student-kit.zip"
PDF = SITE / "_downloads" / "bncourse.pdf"


def _listing(items) -> str:
    items = [str(item) for item in items]
    return "\n  ".join(items[:20]) + ("\n  ..." if len(items) > 20 else "")


def _settle(tab) -> None:
    """Wait until MathJax has typeset the page and course.js has fitted the equations."""
    page = tab.page
    if page.evaluate("() => document.querySelector('.math') !== null"):
        page.wait_for_function("() => window.MathJax && MathJax.startup && "
                               "MathJax.startup.promise", timeout=TIMEOUT_MS)
        page.evaluate("() => MathJax.startup.promise.then(() => true)")
    page.evaluate("""async () => {
        for (const img of document.images) img.loading = "eager";
        await Promise.all([...document.images].filter((img) => !img.complete).map(
            (img) => new Promise((done) => { img.onload = img.onerror = done; })));
    }""")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(300)  # the equation fitting runs after typesetting


@pytest.fixture(scope="module")
def settled(open_tab):
    """``settled(page, viewport, mode)``: a loaded, typeset tab, cached for the module."""
    tabs = {}

    def _get(page: str, viewport: dict, mode: str):
        key = (page, viewport["width"], mode)
        if key not in tabs:
            tab = open_tab(page, viewport=viewport, mode=mode)
            _settle(tab)
            tabs[key] = tab
        return tabs[key]

    yield _get
    for tab in tabs.values():
        tab.close()


# ---------------------------------------------------------------- screenshots


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("width", [VIEWPORT["width"], PHONE["width"]])
def test_screenshot_at_each_width_in_each_mode(document, width, mode, settled, screenshots):
    viewport = VIEWPORT if width == VIEWPORT["width"] else PHONE
    tab = settled(document, viewport, mode)
    theme = tab.page.evaluate("() => document.documentElement.dataset.theme")
    assert theme == mode, f"{document}: the reader's system asks for {mode}, the site shows {theme}"
    shot = screenshots / screenshot_name(document, width, mode)
    tab.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000, f"the screenshot {shot} is nearly empty"
    assert int.from_bytes(shot.read_bytes()[16:20], "big") == width


# ---------------------------------------------------------------- phone layout

_WIDEST = """
() => {
  const width = document.documentElement.clientWidth;
  const culprits = [];
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.right <= width + 1) continue;
    let clipped = false;
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const style = getComputedStyle(a);
      if (style.overflowX !== "visible" && a.getBoundingClientRect().right <= width + 1) {
        clipped = true; break;
      }
      if (style.position === "fixed" || a.tagName === "DIALOG") { clipped = true; break; }
    }
    if (!clipped && getComputedStyle(el).position !== "fixed") {
      culprits.push(`${el.tagName.toLowerCase()}.${[...el.classList].join(".")} ` +
                    `right edge at ${Math.round(box.right)} px: ` +
                    (el.textContent || "").trim().slice(0, 60));
    }
  }
  return {scroll: document.documentElement.scrollWidth, width, culprits: culprits.slice(0, 8)};
}
"""


_FIGURES = """
() => [...document.querySelectorAll(".bd-article .cell_output img, .bd-article figure img")]
  .filter((img) => img.naturalWidth > 0 && img.offsetParent !== null)
  .map((img) => {
    const box = img.getBoundingClientRect();
    return {src: img.getAttribute("src").split("/").pop(), shown: box.width / box.height,
            natural: img.naturalWidth / img.naturalHeight, width: box.width};
  })
"""


@pytest.mark.parametrize("width", [VIEWPORT["width"], PHONE["width"]])
def test_figures_keep_their_aspect_ratio(document, width, settled):
    viewport = VIEWPORT if width == VIEWPORT["width"] else PHONE
    tab = settled(document, viewport, "light")
    figures = tab.page.evaluate(_FIGURES)
    bad = [f for f in figures if abs(f["shown"] / f["natural"] - 1) > 0.01]
    assert not bad, f"{document} at {width} px: figures shown out of shape:\n  {_listing(bad)}"
    wide = [f for f in figures if f["width"] > width]
    assert not wide, f"{document} at {width} px: figures wider than the screen: {wide}"


def test_the_book_has_figures_to_measure(settled):
    counted = sum(len(settled(page, PHONE, "light").page.evaluate(_FIGURES))
                  for page in CHAPTERS)
    assert counted >= 10, f"only {counted} figures on the chapter pages"


def test_printing_a_dark_page_prints_it_light(settled):
    tab = settled(CHAPTERS[0], VIEWPORT, "dark")
    page = tab.page
    page.evaluate("() => window.dispatchEvent(new Event('beforeprint'))")
    page.emulate_media(media="print")
    try:
        theme = page.evaluate("() => document.documentElement.dataset.theme")
        colour = page.evaluate("() => getComputedStyle(document.querySelector("
                               "'.bd-article p')).color")
        filters = page.evaluate("""() => [...document.querySelectorAll(
            '.bd-article .cell_output img')].map((img) => getComputedStyle(img).filter)""")
        hidden = page.evaluate("""() => [...document.querySelectorAll('.bncourse-widget')]
            .every((w) => getComputedStyle(w).display === 'none')""")
    finally:
        page.emulate_media(media="screen")
        page.evaluate("() => window.dispatchEvent(new Event('afterprint'))")
    after = page.evaluate("() => document.documentElement.dataset.theme")
    assert theme == "light", f"a dark page prints in the {theme} palette"
    levels = [int(v) for v in re.findall(r"\d+", colour)[:3]]
    assert max(levels) < 100, f"body text prints in {colour} on white paper"
    assert filters and all(f == "none" for f in filters), filters
    assert hidden, "the answer widgets are printed"
    assert after == "dark", "the page did not return to dark mode after printing"


def test_no_page_is_wider_than_a_phone(document, settled):
    tab = settled(document, PHONE, "light")
    found = tab.page.evaluate(_WIDEST)
    assert found["scroll"] <= found["width"] + 1, (
        f"{document} is {found['scroll']} px wide on a {found['width']} px phone, so it scrolls "
        f"sideways; too wide:\n  {_listing(found['culprits'])}"
    )


_EQUATIONS = """
() => [...document.querySelectorAll('mjx-container[display="true"]')].map((box) => ({
  text: (box.closest(".math") || box).id || box.textContent.slice(0, 40),
  need: box.scrollWidth, have: box.clientWidth,
  overflowX: getComputedStyle(box).overflowX,
  cue: box.classList.contains("course-overflows") &&
       getComputedStyle(box).boxShadow !== "none",
  inBlock: box.closest(".admonition") !== null,
}))
"""


def test_wide_equations_scroll_with_a_visible_cue_on_a_phone(document, settled):
    tab = settled(document, PHONE, "light")
    wide = [eq for eq in tab.page.evaluate(_EQUATIONS) if eq["need"] > eq["have"] + 1]
    bad = [f"{eq['text']}: {eq['need']} px in {eq['have']} px, overflow-x {eq['overflowX']}, "
           f"cue {eq['cue']}" for eq in wide
           if eq["overflowX"] not in ("auto", "scroll") or not eq["cue"]]
    assert not bad, f"{document}: wide equations without a scroll and a cue:\n  {_listing(bad)}"


def test_equations_in_theorem_and_exercise_boxes_fit_on_a_desktop(document, settled):
    tab = settled(document, VIEWPORT, "light")
    clipped = [f"{eq['text']}: {eq['need']} px in {eq['have']} px"
               for eq in tab.page.evaluate(_EQUATIONS)
               if eq["inBlock"] and eq["need"] > eq["have"] + 1]
    assert not clipped, f"{document} at 1280 px: equations cut off in boxes:\n  {_listing(clipped)}"


# ---------------------------------------------------------------- figures

_IMAGES = """
() => [...document.querySelectorAll(".bd-article img")].map((img) => ({
  src: img.getAttribute("src"), alt: img.getAttribute("alt"),
  natural: img.naturalWidth, shown: img.getBoundingClientRect().width,
}))
"""
# A file name or path where words should be: "fig.png", "../_images/3f2a.png", "output_4_0".
_PATHLIKE = re.compile(r"\.(png|jpe?g|svg|gif|webp)$|_images/|^\.{0,2}/|^[\w./-]+$", re.I)


def test_every_image_has_alt_text_in_words(document, settled):
    images = settled(document, VIEWPORT, "light").page.evaluate(_IMAGES)
    bad = [f"{image['src']}: alt={image['alt']!r}" for image in images
           if not (image["alt"] or "").strip() or _PATHLIKE.search(image["alt"].strip())
           or len(image["alt"].split()) < 3]
    assert not bad, f"{document}: images without alt text that says what they show:\n  " + (
        _listing(bad))


def test_png_figures_are_sharp_on_high_density_screens(document, settled):
    images = settled(document, VIEWPORT, "light").page.evaluate(_IMAGES)
    soft = [f"{image['src']}: {image['natural']} px shown at {image['shown']:.0f} px"
            for image in images if (image["src"] or "").lower().endswith(".png")
            and image["shown"] > 0 and image["natural"] < 2 * image["shown"] - 1]
    assert not soft, f"{document}: PNGs below 2x their displayed width:\n  {_listing(soft)}"


def test_figures_are_dimmed_not_white_slabs_in_dark_mode(settled):
    pages = [page for page in CHAPTERS if "<img" in page_html(page)]
    assert pages, "no chapter has a figure"
    tab = settled(pages[0], VIEWPORT, "dark")
    filters = tab.page.evaluate(
        "() => [...document.querySelectorAll('.bd-article .cell_output img')]"
        ".map((img) => getComputedStyle(img).filter)")
    assert filters and all("invert" in f for f in filters), (
        f"{pages[0]}: figures in dark mode keep their white background: filters {filters}"
    )


# ---------------------------------------------------------------- contrast in both modes

_CONTRAST = """
(selector) => {
  const parse = (text) => {
    const p = text.match(/[\\d.]+/g).map(Number);
    return [p[0] / 255, p[1] / 255, p[2] / 255, p.length > 3 ? p[3] : 1];
  };
  const over = (top, bottom) =>
    [0, 1, 2].map((i) => top[i] * top[3] + bottom[i] * (1 - top[3])).concat([1]);
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let colour = parse(getComputedStyle(document.body).backgroundColor);
    if (colour[3] === 0) colour = [1, 1, 1, 1];
    for (const layer of layers.reverse()) colour = over(layer, colour);
    return colour;
  };
  const luminance = (c) => {
    const lin = c.slice(0, 3).map((v) => (v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
  };
  document.querySelectorAll(".toggle-hidden").forEach((el) => el.classList.remove("toggle-hidden"));
  const seen = new Set();
  const found = [];
  for (const block of document.querySelectorAll(selector)) {
    const walker = document.createTreeWalker(block, NodeFilter.SHOW_TEXT);
    const elements = [...block.querySelectorAll("mjx-container")];
    while (walker.nextNode()) {
      if (walker.currentNode.textContent.trim()) elements.push(walker.currentNode.parentElement);
    }
    for (const el of elements) {
      if (seen.has(el) || !el.getClientRects().length) continue;
      const style = getComputedStyle(el);
      if (style.visibility === "hidden" || Number(style.opacity) === 0) continue;
      seen.add(el);
      const bg = background(el);
      const fg = over(parse(style.color), bg);
      const [hi, lo] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
      found.push({where: `${el.tagName.toLowerCase()}.${[...el.classList].join(".")} in ` +
                         `${block.className.split(" ")[0]}`,
                  text: (el.textContent || "").trim().slice(0, 40),
                  ratio: Math.round(((hi + 0.05) / (lo + 0.05)) * 100) / 100});
    }
  }
  return found;
}
"""
BOXES = ("div.exercise, div.solution, div.proof, div.theorem, .bncourse-check, "
         ".bncourse-progress, .bncourse-widget")


@pytest.mark.parametrize("mode", MODES)
def test_text_in_exercise_proof_and_verdict_boxes_is_readable(document, mode, settled):
    # Opens every folded solution: this runs after the screenshots of the same tab.
    found = settled(document, VIEWPORT, mode).page.evaluate(_CONTRAST, BOXES)
    low = sorted({f"{item['ratio']}:1 {item['where']} '{item['text']}'" for item in found
                  if item["ratio"] < MIN_CONTRAST})
    assert not low, (
        f"{document} in {mode} mode: text below {MIN_CONTRAST}:1 contrast:\n  {_listing(low)}"
    )


def test_the_book_has_boxes_to_measure(open_tab):
    tab = open_tab(CHAPTERS[0], mode="dark")
    try:
        _settle(tab)
        assert len(tab.page.evaluate(_CONTRAST, BOXES)) > 20, (
            f"{CHAPTERS[0]} has hardly any text in exercise, proof or verdict boxes")
    finally:
        tab.close()


# ---------------------------------------------------------------- navigation


def test_both_drawers_open_on_a_phone_and_their_links_navigate(open_tab):
    tab = open_tab(CHAPTERS[0], viewport=PHONE)
    try:
        page = tab.page
        page.locator(".bd-header-article .primary-toggle").click()
        page.wait_for_function(
            "() => document.getElementById('pst-primary-sidebar-modal').open", timeout=5_000)
        link = page.locator("#pst-primary-sidebar-modal a.reference.internal").filter(
            has_text=re.compile("Gradients")).first
        assert link.is_visible(), "the site navigation drawer shows no link to chapter 2"
        link.click()
        page.wait_for_url(re.compile(r"02_gradients\.html"), timeout=TIMEOUT_MS)
        page.locator(".bd-header-article .secondary-toggle").click()
        page.wait_for_function(
            "() => document.getElementById('pst-secondary-sidebar-modal').open", timeout=5_000)
        entry = page.locator("#pst-secondary-sidebar-modal nav a").nth(1)
        target = entry.get_attribute("href")
        assert target and target.startswith("#"), f"the contents drawer links {target!r}"
        entry.click()
        page.wait_for_function(f"() => location.hash === {target!r}", timeout=5_000)
        # The drawer closes once a section is chosen, and the page shows that section.
        page.wait_for_function(
            "() => !document.getElementById('pst-secondary-sidebar-modal').open", timeout=5_000)
        top = page.evaluate(f"() => document.getElementById({target[1:]!r})"
                            ".getBoundingClientRect().top")
        assert -5 <= top < PHONE["height"] / 2, f"the section is at {top} px after the tap"
        problems = tab.console_errors + tab.page_errors
        assert not problems, f"the drawers logged errors:\n  {_listing(problems)}"
    finally:
        tab.close()


def test_the_sidebar_toggle_hides_the_sidebar_on_a_desktop(open_tab):
    tab = open_tab(CHAPTERS[0])
    try:
        sidebar = tab.page.locator("#pst-primary-sidebar")
        assert sidebar.is_visible(), "the sidebar is not shown on a desktop"
        tab.page.locator(".bd-header-article .primary-toggle").click()
        tab.page.wait_for_timeout(600)
        box = sidebar.bounding_box()
        assert not sidebar.is_visible() or box is None or box["x"] + box["width"] <= 0, (
            "the sidebar toggle did not hide the sidebar at 1280 px")
    finally:
        tab.close()


def test_the_solution_link_opens_the_solution(open_tab):
    page_name = next(page for page in CHAPTERS if 'class="solution' in page_html(page))
    tab = open_tab(page_name)
    try:
        solution = tab.page.locator("div.solution").first
        body = solution.locator(":scope > :not(.admonition-title)").first
        assert body.is_hidden(), "the solution is open before it is clicked"
        url = tab.page.url
        solution.locator(":scope > .admonition-title a").first.click()
        body.wait_for(state="visible", timeout=5_000)
        assert tab.page.url == url, f"clicking the solution's title went to {tab.page.url}"
    finally:
        tab.close()


def test_search_results_show_no_raw_tex(open_tab):
    tab = open_tab("search.html?q=gamma")
    try:
        results = tab.page.locator("#search-results ul.search li")
        results.first.wait_for(state="attached", timeout=TIMEOUT_MS)
        tab.page.wait_for_timeout(1_500)  # the summaries arrive one page at a time
        text = tab.page.locator("#search-results").inner_text()
        raw = re.findall(r".{0,30}(?:\\\(|\\\)|\\\[|\\[a-zA-Z]+\{?|\$\$).{0,30}", text)
        assert not raw, f"search results show TeX:\n  {_listing(raw)}"
    finally:
        tab.close()


# ---------------------------------------------------------------- the HTML of every page


def test_one_viewport_meta_tag_and_a_favicon(page):
    html = page_html(page)
    if re.search(r'<meta\s+http-equiv="refresh"', html, re.IGNORECASE) and len(html) < 500:
        return  # the site's index.html only forwards to the intro page
    viewports = re.findall(r'<meta\s+name="viewport"', html)
    assert len(viewports) == 1, f"{page} has {len(viewports)} viewport meta tags"
    icon = re.search(r'<link\s+rel="icon"\s+href="([^"]+)"', html)
    assert icon, f"{page} names no favicon, so browsers ask for /favicon.ico and get a 404"
    assert (SITE / Path(page).parent / icon.group(1)).resolve().is_file()


def test_no_empty_index_or_raw_label_index_is_built():
    leftovers = [name for name in ("genindex.html", "prf-prf.html", "py-modindex.html")
                 if (SITE / name).exists()]
    assert not leftovers, f"generated index pages are reachable by address: {leftovers}"
    linked = [page for page in site_pages() if "genindex.html" in page_html(page)]
    assert not linked, f"pages link the general index: {linked}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_theorem_like_statements_share_one_sequence(chapter):
    numbers = re.findall(r"\b(?:Theorem|Proposition|Lemma|Corollary) (\d+)\.(\d+)\b",
                         re.sub(r'<a class="reference[^>]*>.*?</a>', "", page_html(chapter)))
    titles = [int(n) for _, n in numbers]
    shown = sorted(set(titles))
    assert shown == list(range(1, len(shown) + 1)), (
        f"{chapter}: theorem-like statements numbered {shown}, not one sequence 1..n"
    )


def test_bibliography_is_author_year_with_linked_arxiv_ids():
    html = page_html("book/bibliography.html")
    labels = re.findall(r'<span class="label"><span class="fn-bracket">\[</span>(.*?)<span', html)
    assert labels, "the bibliography has no entries"
    bad = [label for label in labels
           if not re.fullmatch(r"[^\d\[\]]+ (\d{4}[a-z]?|n\.d\.)", label)]
    assert not bad, f"bibliography labels that are not author-year: {bad}"
    unlinked = re.findall(r"(?<!>)arXiv:\d{4}\.\d{4,5}", html)
    assert not unlinked, f"arXiv ids without a link: {unlinked}"
    assert "https://arxiv.org/abs/" in html


def test_every_page_says_when_it_was_updated_and_under_which_licence(document):
    html = page_html(document)
    assert re.search(r"Last updated on \d{4}-\d{2}-\d{2}", html), f"{document}: no date"
    assert "creativecommons.org/licenses/by/4.0" in html, f"{document}: no licence in the footer"


def test_the_landing_page_offers_the_three_routes_and_links_every_chapter():
    html = page_html("book/intro.html")
    for chapter in CHAPTERS:
        assert f'href="{Path(chapter).name}"' in html, f"the intro does not link {chapter}"
    assert 'href="../_downloads/bncourse-student-kit.zip"' in html
    assert KIT_ZIP.is_file(), f"the intro links the student kit, but {KIT_ZIP} is missing"
    assert 'href="../_downloads/bncourse.pdf"' in html
    for words in ("Read and check here", "Download the student kit", "Clone the repository"):
        assert words in html, f"the intro lacks the route '{words}'"
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert f"version {version.group(1)}" in html, "the intro does not state the version"


def test_the_book_as_a_pdf_has_its_pages_and_typeset_formulas():
    from pypdf import PdfReader

    assert PDF.is_file(), f"no PDF at {PDF}: run `make pdf`"
    reader = PdfReader(PDF)
    pages = len(reader.pages)
    assert 20 <= pages <= 600, f"the PDF has {pages} pages"
    text = "\n".join(page.extract_text() for page in reader.pages[:12])
    # The batch mean from the notation table, as MathJax typeset it: mu_B = 1/m sum_{i=1}^m x_i.
    assert re.search(r"μ\s*B\s*=\s*1\s*m\s*∑", text), "the PDF lacks the batch mean's formula"
    assert "\\frac" not in text and "$$" not in text, "the PDF shows raw TeX"


# ---------------------------------------------------------------- weight


@pytest.fixture(scope="module")
def weights(open_tab, screenshots):
    rows = {}
    for page in DOCUMENTS + ["search.html"]:
        tab = open_tab(page, measure=True)
        try:
            _settle(tab)
            tab.page.wait_for_timeout(500)
            rows[page] = (sum(tab.sizes.values()), len(tab.sizes), dict(tab.sizes))
        finally:
            tab.close()
    lines = [f"{'page':32} {'bytes':>10} {'requests':>9}"]
    lines += [f"{page:32} {size:10d} {count:9d}" for page, (size, count, _) in rows.items()]
    (screenshots / "page-weight.txt").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    return rows


@pytest.mark.parametrize("weighed", DOCUMENTS + ["search.html"])
def test_page_weight_is_within_budget(weighed, weights):
    page = weighed
    size, count, sizes = weights[page]
    heaviest = sorted(sizes.items(), key=lambda item: -item[1])[:6]
    assert size <= PAGE_BYTES_BUDGET and count <= PAGE_REQUESTS_BUDGET, (
        f"{page} loads {size} bytes in {count} requests (budget {PAGE_BYTES_BUDGET} bytes, "
        f"{PAGE_REQUESTS_BUDGET} requests); heaviest:\n  "
        + _listing(f"{s:9d} {u}" for u, s in heaviest)
    )
    assert not any("fontawesome.js" in url for url in sizes), f"{page} loads Font Awesome's JS"


# ---------------------------------------------------------------- internal names


_LABEL = re.compile(r"\b(?:eq|thm|prop|lem|cor|ex|fig|sec)-[a-z0-9]+(?:-[a-z0-9]+)+\b"
                    r"|\beq\. \([a-z][a-z-]*\)")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_no_internal_label_shows_in_the_text_code_or_outputs(chapter):
    import html as entities

    body = page_html(chapter).split("<main", 1)[-1]
    text = entities.unescape(re.sub(r"<[^>]+>", " ", body))
    leaks = sorted({match.group(0) for match in _LABEL.finditer(text)})
    assert not leaks, (
        f"{chapter} shows label names where readers should see numbers or words: {leaks}"
    )
