"""Print the single-page build of the book to a PDF with headless Chromium (``make pdf``).

    python book/_ext/course_pdf.py _build/singlehtml _build/html/_downloads/bncourse.pdf

The single-page build (``jupyter-book build . --builder singlehtml``) is served on 127.0.0.1
and opened in the system's Chromium (``CHROMIUM``, default ``/usr/bin/chromium``; Playwright
only drives it). Every request to another host is refused, so the PDF is made offline. The
script waits until MathJax has typeset every formula, opens every folded solution, and
prints the page in the print style of the site (no navigation, A4).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TIMEOUT_MS = 120_000


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def print_pdf(site: Path, target: Path, chromium: str | None = None) -> int:
    """Write ``target`` from the single page of ``site``; return the formulas typeset."""
    from playwright.sync_api import sync_playwright

    pages = sorted(site.glob("book/*.html")) or sorted(site.glob("*.html"))
    pages = [p for p in pages if p.stat().st_size > 10_000]
    if len(pages) != 1:
        raise FileNotFoundError(f"no single-page build at {site} (found {pages}): run the "
                                "singlehtml build")
    # The single page links its assets as if it sat at the root of the build (Jupyter Book
    # writes it under book/, with a redirect at index.html): print a copy from the root.
    start = "print.html"
    shutil.copy2(pages[0], site / start)
    chromium = chromium or os.environ.get("CHROMIUM", "/usr/bin/chromium")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=site))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.route("**/*", lambda route, request: route.continue_()
                       if request.url.startswith(base) or request.url.startswith("data:")
                       else route.abort("blockedbyclient"))
            page.goto(base + start, wait_until="load", timeout=TIMEOUT_MS)
            page.wait_for_function("() => window.MathJax && MathJax.startup &&"
                                   " MathJax.startup.promise", timeout=TIMEOUT_MS)
            page.evaluate("() => MathJax.startup.promise")
            untypeset = page.evaluate(
                "() => [...document.querySelectorAll('.math')]"
                ".filter(el => !el.querySelector('mjx-container')).length")
            if untypeset:
                raise RuntimeError(f"MathJax left {untypeset} formulas untypeset")
            typeset = page.evaluate("() => document.querySelectorAll('mjx-container').length")
            page.evaluate("() => document.querySelectorAll('.toggle-hidden')"
                          ".forEach(el => el.classList.remove('toggle-hidden'))")
            page.emulate_media(media="print")
            target.parent.mkdir(parents=True, exist_ok=True)
            page.pdf(path=str(target), format="A4", print_background=True,
                     margin={"top": "18mm", "bottom": "18mm", "left": "16mm", "right": "16mm"},
                     display_header_footer=True, header_template="<span></span>",
                     footer_template='<div style="font-size:8px;width:100%;text-align:center">'
                                     '<span class="pageNumber"></span></div>')
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return typeset


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    site, target = Path(argv[0]), Path(argv[1])
    typeset = print_pdf(site, target)
    print(f"wrote {target} ({target.stat().st_size // 1024} kB, {typeset} formulas typeset)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
