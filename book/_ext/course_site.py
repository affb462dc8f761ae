"""Sphinx glue that makes the course site publishable and self-contained.

* MathJax is served by the site itself. ``make setup`` installs it from the npm registry
  into ``node_modules/mathjax`` (pinned in package.json/package-lock.json); this extension
  copies the parts a page can ask for into ``<outdir>/_static/mathjax/``. It is copied by
  hand, not listed in ``html_static_path``, because Jupyter Book adds every ``.js`` and
  ``.css`` file it finds under the static paths to every page.
* Thebe (live code through a remote kernel) is off: its loader script, which points at a
  CDN and is declared twice on every page by sphinx-thebe, is left out of the pages, and
  inline scripts that other extensions add twice are written once.
* The colour scheme follows the reader's system (``default_mode: auto``); without it the
  theme logs a console error on a first visit.
* One setting, ``repository.url`` in ``_config.yml``, switches the repository links on.
  While it is empty the pages have no repository, "edit this page", issue or launch
  (Colab, Binder) buttons, so nothing links to an address that does not exist.
* The site's own styles and script (``book/_static/course.css`` and ``course.js``): the
  phone navigation drawers, wide equations that scroll with a visible cue, figures in dark
  mode, solution links that open the solution, search results without TeX.
* Every page is trimmed after the build: one viewport meta tag, no Font Awesome script (the
  theme's stylesheet already draws the icons with the Font Awesome web font), a search button
  named by its visible text, bibliography entries that are the items of their list.
* A glossary term linked from a page (``{term}``) shows its definition on hover and on
  keyboard focus: the definitions are taken from the built glossary page into
  ``_static/course-glossary.js``, which the pages with term links load.
* Formulas are not tab stops (MathJax's ``inTabOrder`` setting is off).
* No generated index pages (an empty general index, a raw-label proof index).
* The bibliography is labelled author-year, like the citations in the text, and an arXiv
  identifier in a ``note`` links to its abstract page (pybtex style ``course``).
* Each page shows the date of its source's last commit ("Last updated on").
* The numbers the reader sees, by label (equations, theorems, exercises, figures), are
  written to ``<outdir>/_static/course-numbers.json`` for the student kit
  (``python -m bncourse.authoring student``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError

MATHJAX_PACKAGE = Path("node_modules") / "mathjax" / "es5"
MATHJAX_ENTRY = "tex-mml-chtml.js"
# The entry script loads the rest on demand: TeX extensions, fonts, the menu, speech.
MATHJAX_PARTS = ("a11y", "adaptors", "input", "output", "sre", "ui")
REPOSITORY_BUTTONS = ("use_repository_button", "use_edit_page_button", "use_issues_button")
LAUNCH_KEYS = ("binderhub_url", "jupyterhub_url", "colab_url", "deepnote_url", "thebe")
STATIC = Path(__file__).resolve().parent.parent / "_static"
NUMBERS_FILE = "course-numbers.json"
GLOSSARY_FILE = "course-glossary.js"
# A glossary entry as Sphinx writes it: <dt id="term-..."> the term </dt><dd> the definition.
_GLOSSARY_ENTRY = re.compile(r'<dt id="(term-[^"]+)">(.*?)</dt>\s*<dd>(.*?)</dd>', re.DOTALL)
_HEADERLINK = re.compile(r'<a class="headerlink"[^>]*>.*?</a>', re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_VIEWPORT = re.compile(r"\s*<meta\s+name=\"viewport\"[^>]*>")
# Sphinx's search tools and the whole search index, which the theme loads on every page for
# a search-as-you-type box this site does not use (its search is the search page).
_SEARCH_TOOLS = re.compile(
    r"\s*<script\b[^>]*src=\"[^\"]*(?:searchtools\.js|language_data\.js|searchindex\.js)"
    r"[^\"]*\"[^>]*></script>")
# sphinx-design's styles and tab script, on pages that use none of its components.
_DESIGN = re.compile(r"\s*<(?:link\b[^>]*sphinx-design\.min\.css[^>]*>|"
                     r"script\b[^>]*design-tabs\.js[^>]*></script>)")
# The theme's search button is named "Search" but shows "Search Ctrl+K": a name that differs
# from the visible label confuses speech input. Without aria-label its name is its text.
_SEARCH_LABEL = re.compile(
    r'(<button class="btn search-button-field[^"]*"[^>]*?) aria-label="Search"')
# sphinxcontrib-bibtex marks the bibliography as a list whose entries carry the deprecated
# role doc-biblioentry, so the list has no list items; they are list items.
_BIBLIOENTRY = re.compile(r'(<div class="citation"[^>]*?) role="doc-biblioentry"')
# The primary sidebar holds the book's title outside any landmark; as a named region it is one.
_SIDEBAR = '<div id="pst-primary-sidebar" class="bd-sidebar-primary bd-sidebar">'
_SIDEBAR_REGION = ('<div id="pst-primary-sidebar" class="bd-sidebar-primary bd-sidebar" '
                   'role="region" aria-label="Book contents">')
_FONTAWESOME = re.compile(r"\s*<script\b[^>]*src=\"[^\"]*fontawesome\.js[^\"]*\"[^>]*></script>")


def _mathjax_source(app: Sphinx) -> Path:
    return Path(app.confdir) / MATHJAX_PACKAGE


def _repository_links(app: Sphinx, config: Config) -> None:
    options = dict(config.html_theme_options)
    url = (options.get("repository_url") or "").strip()
    for button in REPOSITORY_BUTTONS:
        options[button] = bool(url)
    launch = dict(options.get("launch_buttons") or {})
    if not url:
        options["repository_url"] = ""
        for key in LAUNCH_KEYS:
            launch.pop(key, None)
    options["launch_buttons"] = launch
    config.html_theme_options = options


def _theme_defaults(app: Sphinx, config: Config) -> None:
    config.html_context = {"default_mode": "auto", **config.html_context}
    config.html_static_path = [*config.html_static_path, str(STATIC)]
    config.html_favicon = str(STATIC / "favicon.svg")
    # No generated index pages: the general index would be empty and sphinx-proof's domain
    # index lists raw labels; neither is linked from the book.
    config.html_use_index = False
    config.html_domain_indices = False
    if not config.html_last_updated_fmt:
        config.html_last_updated_fmt = "%Y-%m-%d"


NO_REPOSITORY = ("this copy of the site was built before the repository had a public "
                 "address, so ask whoever gave you the course for a copy.")


def course_version(root: Path) -> str:
    """The version of the course: ``bncourse``'s, from ``pyproject.toml``."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    project = text.split("[project]", 1)[-1].split("\n[", 1)[0]
    found = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    if not found:
        raise ConfigError("pyproject.toml has no [project] version")
    return found.group(1)


def _substitutions(app: Sphinx, config: Config) -> None:
    """``{{ course_version }}`` and ``{{ course_repository }}`` for the pages' Markdown.

    The repository sentence links ``repository.url`` once it is set, and says in words where
    the code comes from while it is empty.
    """
    url = (dict(config.html_theme_options).get("repository_url") or "").strip()
    repository = f"[{url}]({url})." if url else NO_REPOSITORY
    config.myst_substitutions = {
        **(config.myst_substitutions or {}),
        "course_version": course_version(Path(app.confdir)),
        "course_repository": repository,
    }


def _execution_mode(app: Sphinx, config: Config) -> None:
    """``BNCOURSE_NB_EXECUTION=off`` renders the stored outputs instead of executing.

    ``make pdf`` uses it for the single-page build: the chapters' stored outputs are the
    executed ones (``make test`` compares them with a fresh run), so printing them again
    needs no second execution of every chapter.
    """
    mode = os.environ.get("BNCOURSE_NB_EXECUTION", "").strip()
    if mode:
        if mode not in ("off", "force", "auto", "cache", "inline"):
            raise ConfigError(f"BNCOURSE_NB_EXECUTION={mode!r} is not a MyST-NB execution mode")
        config.nb_execution_mode = mode


def _last_commit_date(path: Path) -> str | None:
    """The date of the last commit that touched ``path`` (None outside git or if untracked)."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", path.name],
            cwd=path.parent, capture_output=True, text=True, timeout=20, check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _last_updated(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """"Last updated on": the last commit of the page's source, else the build date."""
    if doctree is None or pagename not in app.env.found_docs:
        return
    source = Path(app.env.doc2path(pagename))
    date = _last_commit_date(source) or _dt.date.today().isoformat()
    context["last_updated"] = date


def _is_thebe(asset: object) -> bool:
    filename = str(getattr(asset, "filename", "") or "")
    body = str(getattr(asset, "attributes", {}).get("body", ""))
    return "sphinx-thebe" in filename or "THEBE_JS_URL" in body


def _page_assets(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    scripts, seen = [], set()
    for script in context.get("script_files", []):
        key = (str(getattr(script, "filename", script) or ""),
               str(getattr(script, "attributes", {}).get("body", "")))
        if _is_thebe(script) or key in seen:
            continue
        seen.add(key)
        scripts.append(script)
    context["script_files"][:] = scripts
    context["css_files"][:] = [css for css in context.get("css_files", []) if not _is_thebe(css)]


def _mathjax_options(app: Sphinx, config: Config) -> None:
    """Formulas are not tab stops: MathJax would put each one in the tab order (hundreds per
    chapter, ahead of the exercises). Its explorer stays reachable from its context menu."""
    settings = {"inTabOrder": False}
    base = dict(config.mathjax3_config or {})
    options = dict(base.get("options") or {})
    menu = dict(options.get("menuOptions") or {})
    menu["settings"] = {**dict(menu.get("settings") or {}), **settings}
    options["menuOptions"] = menu
    base["options"] = options
    config.mathjax3_config = base


def _check_mathjax(app: Sphinx, config: Config) -> None:
    expected = f"mathjax/{MATHJAX_ENTRY}"
    if config.mathjax_path != expected:
        raise ConfigError(
            f"mathjax_path is {config.mathjax_path!r}; the site serves its own MathJax, so it "
            f"must be {expected!r} (a path under _static)."
        )
    if not (_mathjax_source(app) / MATHJAX_ENTRY).is_file():
        raise ConfigError(
            f"MathJax is not installed in {MATHJAX_PACKAGE}: run `make setup` "
            "(it runs `npm ci` on the committed package-lock.json)."
        )


def _single_page_handlers(app: Sphinx) -> None:
    """Let the single-page builder (``make pdf``) write every node the HTML builder writes.

    sphinx-proof registers its theorem and proof nodes for ``html`` and ``latex`` only; the
    single-page builder uses the same HTML translator, so it takes the same handlers.
    """
    if app.builder.name != "singlehtml":
        return
    handlers = app.registry.translation_handlers
    single = handlers.setdefault("singlehtml", {})
    for node, pair in handlers.get("html", {}).items():
        single.setdefault(node, pair)


def _copy_mathjax(app: Sphinx) -> None:
    if app.builder.format != "html":
        return
    source = _mathjax_source(app)
    target = Path(app.outdir) / "_static" / "mathjax"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / MATHJAX_ENTRY, target / MATHJAX_ENTRY)
    for part in MATHJAX_PARTS:
        shutil.copytree(source / part, target / part, dirs_exist_ok=True)


def glossary_definitions(html: str) -> dict[str, dict[str, str]]:
    """The glossary page's entries, by anchor: ``{"term-eps": {"term": "eps", "html": ...}}``
    (the definition's HTML as the glossary page shows it, its maths still TeX for MathJax)."""
    entries = {}
    for anchor, term, definition in _GLOSSARY_ENTRY.findall(html):
        term = _TAG.sub("", _HEADERLINK.sub("", term)).strip()
        entries[anchor] = {"term": term, "html": definition.strip()}
    return entries


def _write_glossary(outdir: Path) -> bool:
    """``_static/course-glossary.js``: the definitions that the chapters' term links show on
    hover and focus (a script, not JSON, so that it loads from ``file://`` too)."""
    pages = [p for p in outdir.rglob("glossary.html") if "_static" not in p.parts]
    entries: dict[str, dict[str, str]] = {}
    for page in pages:
        entries.update(glossary_definitions(page.read_text(encoding="utf-8")))
    if not entries:
        return False
    target = outdir / "_static" / GLOSSARY_FILE
    target.write_text("window.courseGlossary = " + json.dumps(entries, indent=1, sort_keys=True)
                      + ";\n", encoding="utf-8")
    return True


def _trim_pages(app: Sphinx, exception: Exception | None) -> None:
    """Drop from every page what the site does not use, and duplicate viewport tags.

    Font Awesome's script goes (the theme's stylesheet draws the icons with the web font);
    the search tools and index go from every page but the search page; sphinx-design's files
    go from pages without a sphinx-design component.
    """
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    glossary = _write_glossary(outdir)
    for page in outdir.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        trimmed = _FONTAWESOME.sub("", html)
        if glossary and "std-term" in html and GLOSSARY_FILE not in html:
            # Pages that link a glossary term load the definitions (after course.js).
            depth = len(page.relative_to(outdir).parts) - 1
            tag = f'<script defer src="{"../" * depth}_static/{GLOSSARY_FILE}"></script>\n'
            trimmed = trimmed.replace("</head>", tag + "</head>", 1)
        trimmed = _SEARCH_LABEL.sub(r"\1", trimmed)
        trimmed = _BIBLIOENTRY.sub(r'\1 role="listitem"', trimmed)
        trimmed = trimmed.replace(_SIDEBAR, _SIDEBAR_REGION, 1)
        if page.relative_to(outdir).as_posix() != "search.html":
            trimmed = _SEARCH_TOOLS.sub("", trimmed)
        body = trimmed.split("<body", 1)[-1]
        if 'class="sd-' not in body and " sd-" not in body:
            trimmed = _DESIGN.sub("", trimmed)
        tags = list(_VIEWPORT.finditer(trimmed))
        for tag in reversed(tags[1:]):  # keep the first viewport tag, drop the others
            trimmed = trimmed[: tag.start()] + trimmed[tag.end():]
        if trimmed != html:
            page.write_text(trimmed, encoding="utf-8")


def reader_numbers(env) -> dict[str, str]:
    """What the reader sees for each label: ``{"eq-formula-mean": "1.1", ...}``.

    Equations map to their number (shown in the text as "(1.1)"); theorem-like statements,
    exercises and figures map to their word and number ("Theorem 4.1", "Exercise 1.2",
    "Figure 2.1"). The numbers are Sphinx's own (``env.toc_fignumbers``, chapter-numbered by
    ``use_multitoc_numbering``), so they are the ones the site shows.
    """
    numbers: dict[str, str] = {}
    fignumbers = getattr(env, "toc_fignumbers", {})

    def number(docname: str, figtype: str, node_id: str) -> str | None:
        value = fignumbers.get(docname, {}).get(figtype, {}).get(node_id)
        return ".".join(map(str, value)) if value else None

    for label, (docname, _) in env.get_domain("math").equations.items():
        shown = number(docname, "displaymath", f"equation-{label}")
        if shown:
            numbers[label] = shown
    words = {"figure": "Figure", "table": "Table", "code-block": "Listing"}
    for label, (docname, node_id) in env.get_domain("std").anonlabels.items():
        for figtype, word in words.items():
            shown = number(docname, figtype, node_id)
            if shown:
                numbers[label] = f"{word} {shown}"
    for label, info in getattr(env, "proof_list", {}).items():
        shown = number(info["docname"], info.get("countertype", ""), label)
        if shown and not info.get("nonumber"):
            numbers[label] = f"{str(info.get('realtype', '')).title()} {shown}"
    for label, info in getattr(env, "sphinx_exercise_registry", {}).items():
        if info.get("type") != "exercise":
            continue
        shown = number(info["docname"], "exercise", label)
        if shown:
            numbers[label] = f"Exercise {shown}"
    return numbers


def _write_numbers(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.name != "html":
        return
    target = Path(app.outdir) / "_static" / NUMBERS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(reader_numbers(app.env), indent=1, sort_keys=True),
                      encoding="utf-8")


def setup(app: Sphinx) -> dict[str, object]:
    from course_bibstyle import register as register_bibstyle

    register_bibstyle()
    app.connect("config-inited", _substitutions)
    app.connect("config-inited", _repository_links)
    app.connect("config-inited", _theme_defaults)
    app.connect("config-inited", _check_mathjax)
    app.connect("config-inited", _mathjax_options)
    app.connect("config-inited", _execution_mode)
    app.connect("html-page-context", _page_assets, priority=900)
    app.connect("html-page-context", _last_updated)
    app.connect("builder-inited", _copy_mathjax)
    app.connect("builder-inited", _single_page_handlers)
    app.connect("build-finished", _trim_pages)
    app.connect("build-finished", _write_numbers)
    app.add_css_file("course.css", priority=900)
    # Deferred and early: it must run before the theme's deferred scripts (see course.js).
    app.add_js_file("course.js", loading_method="defer", priority=100)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
