"""The built site under test: where it is, its pages, and what each page holds."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("BNCOURSE_SITE", ROOT / "_build" / "html")).resolve()
SCREENSHOTS = Path(os.environ.get("BNCOURSE_SCREENSHOTS", ROOT / "_build" / "screenshots"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Folders of the build that hold assets, not pages.
ASSET_DIRS = {"_static", "_sources", "_downloads", "_images", ".doctrees", ".buildinfo"}
VIEWPORT = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
MODES = ("light", "dark")
TIMEOUT_MS = 30_000


def site_pages() -> list[str]:
    """Every HTML page of the built site, relative to its root, in a stable order."""
    if not (SITE / "index.html").is_file():
        raise pytest.UsageError(f"no built site at {SITE}: run `make book` first")
    pages = [
        path.relative_to(SITE).as_posix()
        for path in SITE.rglob("*.html")
        if not ASSET_DIRS.intersection(path.relative_to(SITE).parts[:-1])
    ]
    return sorted(pages)


def is_document(page: str) -> bool:
    """A page written from a source of the book (a chapter, the intro), not a generated one."""
    stem = page.removesuffix(".html")
    sources = SITE / "_sources"
    return any(sources.glob(f"{stem}.*"))


def page_html(page: str) -> str:
    return (SITE / page).read_text(encoding="utf-8")


def has_math(page: str) -> bool:
    return re.search(r'class="math[ "]', page_html(page)) is not None


def has_solutions(page: str) -> bool:
    return re.search(r'class="solution[ "]', page_html(page)) is not None


def screenshot_name(page: str, width: int, mode: str) -> str:
    """``book-01_transform-390-dark.png``: a page's screenshot at a width, in a mode."""
    return f"{page.removesuffix('.html').replace('/', '-')}-{width}-{mode}.png"
