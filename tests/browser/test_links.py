"""Every internal link and anchor of the built site resolves; external links are listed.

Each page's ``href`` and ``src`` attributes are read from the built HTML: a link inside the
site must name a file that exists and, with ``#anchor``, an element with that id on the target
page (equations, figures, exercises, glossary terms, sections). Links that leave the site are
not fetched (the tests have no network): they go, with the pages that hold them, to
``_build/screenshots/external-links.txt``.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sitepages import SITE, page_html, site_pages

_LINK = re.compile(r'\s(?:href|src)="([^"]*)"')
_ID = re.compile(r'\s(?:id|name)="([^"]*)"')


@cache
def ids_of(path: Path) -> frozenset[str]:
    return frozenset(_ID.findall(path.read_text(encoding="utf-8")))


def _links(page: str) -> list[str]:
    html = page_html(page)
    # Script bodies and inline templates are not links the reader follows.
    html = re.sub(r"<script\b[^>]*>.*?</script>", "", html, flags=re.DOTALL)
    return [link.replace("&amp;", "&") for link in _LINK.findall(html)]


def check_site() -> tuple[list[str], dict[str, set[str]]]:
    """The broken internal links (``page: link (why)``) and the external links by URL."""
    broken: list[str] = []
    external: dict[str, set[str]] = {}
    for page in site_pages():
        here = SITE / page
        for link in _links(page):
            parts = urlsplit(link)
            if parts.scheme in ("http", "https"):
                external.setdefault(link, set()).add(page)
                continue
            if parts.scheme in ("mailto", "data", "javascript") or link.startswith("//"):
                if link.startswith("//"):
                    external.setdefault(link, set()).add(page)
                continue
            if parts.scheme:
                broken.append(f"{page}: {link} (unknown scheme)")
                continue
            target = (here.parent / unquote(parts.path)).resolve() if parts.path else here
            if parts.path.endswith("/") or target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                shown = target.relative_to(SITE) if target.is_relative_to(SITE) else target
                broken.append(f"{page}: {link} (no file {shown})")
                continue
            anchor = unquote(parts.fragment)
            if anchor and target.suffix == ".html" and anchor not in ids_of(target):
                broken.append(f"{page}: {link} (no #{anchor} on {target.relative_to(SITE)})")
    return broken, external


def test_every_internal_link_and_anchor_resolves(screenshots):
    broken, external = check_site()
    lines = [f"{url}  ({', '.join(sorted(pages))})" for url, pages in sorted(external.items())]
    (screenshots / "external-links.txt").write_text(
        "External links of the site (not fetched):\n" + "\n".join(lines) + "\n", encoding="utf-8")
    assert not broken, f"{len(broken)} broken links:\n  " + "\n  ".join(broken[:40])


def test_the_check_sees_the_anchors_that_matter():
    """Equation, figure, exercise and glossary anchors are among the links checked."""
    anchors = [urlsplit(link).fragment for page in site_pages() for link in _links(page)]
    for kind in ("equation-", "fig-", "ex-", "term-"):
        assert any(a.startswith(kind) for a in anchors), f"no link to a #{kind}... anchor"


def test_the_check_finds_a_dead_anchor(tmp_path, monkeypatch):
    """A renamed label leaves a dead link, which the check reports."""
    import shutil

    import sitepages
    import test_links as module

    copy = tmp_path / "html"
    shutil.copytree(SITE, copy, ignore=shutil.ignore_patterns("_images", "mathjax", "_sources",
                                                              "_downloads"))
    page = copy / "book" / "glossary.html"
    html = page.read_text(encoding="utf-8")
    page.write_text(html.replace('id="term-momentum"', 'id="term-momentum-renamed"', 1),
                    encoding="utf-8")
    monkeypatch.setattr(module, "SITE", copy)
    monkeypatch.setattr(sitepages, "SITE", copy)
    monkeypatch.setattr(module, "page_html",
                        lambda p: (copy / p).read_text(encoding="utf-8"))
    monkeypatch.setattr(module, "site_pages", lambda: sorted(
        q.relative_to(copy).as_posix() for q in copy.rglob("*.html")
        if not {"_static", "_sources", "_downloads", "_images"} & set(
            q.relative_to(copy).parts[:-1])))
    ids_of.cache_clear()
    broken, _ = check_site()
    ids_of.cache_clear()
    assert any("#term-momentum" in b for b in broken), broken[:5]


def test_the_site_ships_no_test_tool():
    """axe-core is injected by the tests only: no file of the site is it or loads it."""
    shipped = [p.relative_to(SITE).as_posix() for p in SITE.rglob("*axe*")]
    assert not shipped, shipped
    loading = [page for page in site_pages() if "axe.min.js" in page_html(page)]
    assert not loading, loading
