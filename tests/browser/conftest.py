"""Fixtures of the browser test: the built site on a local server, and headless Chromium.

Run by ``make browser`` after ``make book``. Settings, all optional, from the environment:

* ``BNCOURSE_SITE``: the built site (default ``_build/html``);
* ``BNCOURSE_SCREENSHOTS``: where the page screenshots go (default ``_build/screenshots``);
* ``CHROMIUM``: the browser to drive (default ``/usr/bin/chromium``, Debian's package).
  Playwright only drives it; it never downloads a browser of its own.
"""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sitepages import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SCREENSHOTS,
    SITE,
    TIMEOUT_MS,
    VIEWPORT,
    has_math,
    has_solutions,
    is_document,
    site_pages,
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``page`` (every page), ``math_page`` and ``solution_page``."""
    if "page" in metafunc.fixturenames:
        metafunc.parametrize("page", site_pages())
    if "document" in metafunc.fixturenames:
        metafunc.parametrize("document", [p for p in site_pages() if is_document(p)])
    if "math_page" in metafunc.fixturenames:
        metafunc.parametrize("math_page", [p for p in site_pages() if has_math(p)])
    if "solution_page" in metafunc.fixturenames:
        metafunc.parametrize("solution_page", [p for p in site_pages() if has_solutions(p)])


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="session")
def base_url() -> Iterator[str]:
    """The site served by a plain static file server on 127.0.0.1 (a free port)."""
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (the system's), one for the whole session."""
    if not Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is None:
        pytest.exit(f"no Chromium at {CHROMIUM}: install Debian's `chromium` or set CHROMIUM", 2)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    if SCREENSHOTS.exists():
        shutil.rmtree(SCREENSHOTS)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


@dataclass
class Tab:
    """A browser tab on the local site that records what goes wrong while it is open."""

    page: object
    base_url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    off_host: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # Every finished request on the site, by URL: the bytes of its body (for the page weight).
    sizes: dict[str, int] = field(default_factory=dict)
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.page.context.close()
            self.closed = True


@pytest.fixture(scope="session")
def open_tab(browser, base_url):
    """A factory: ``open_tab(path, viewport=None, mode=None)`` loads a page in a fresh context.

    ``viewport`` defaults to the desktop one (1280 px); ``mode`` is the reader's system
    colour scheme, ``"light"`` or ``"dark"`` (the site follows it). Every request that would
    leave 127.0.0.1 is blocked and recorded, so a page that needs the network fails the test
    instead of quietly working online.
    """
    tabs: list[Tab] = []

    def _open(path: str, viewport: dict | None = None, mode: str | None = None,
              measure: bool = False) -> Tab:
        options = {"viewport": viewport or VIEWPORT, "service_workers": "block"}
        if mode is not None:
            if mode not in ("light", "dark"):
                raise ValueError(f"mode must be 'light' or 'dark', not {mode!r}")
            options["color_scheme"] = mode
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        tab = Tab(page=page, base_url=base_url)

        def route(route, request):
            url = request.url
            if url.startswith(base_url) or url.startswith(("data:", "blob:", "about:")):
                route.continue_()
            else:
                tab.off_host.append(url)
                route.abort("blockedbyclient")

        def on_console(message):
            if message.type == "error":
                where = message.location.get("url", "")
                tab.console_errors.append(f"{message.text} ({where})" if where else message.text)

        def on_failed(request):
            if request.url.startswith(base_url):
                tab.failed.append(f"{request.url}: {request.failure}")

        def on_response(response):
            if response.status >= 400:
                tab.failed.append(f"{response.url}: HTTP {response.status}")

        def on_finished(request):
            if request.url.startswith(base_url):
                tab.sizes[request.url] = request.sizes()["responseBodySize"]

        context.route("**/*", route)
        page.on("console", on_console)
        page.on("pageerror", lambda error: tab.page_errors.append(str(error)))
        page.on("requestfailed", on_failed)
        page.on("response", on_response)
        if measure:
            page.on("requestfinished", on_finished)
        page.goto(base_url + path, wait_until="load")
        tabs.append(tab)
        return tab

    yield _open
    for tab in tabs:
        tab.close()
