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
"""

from __future__ import annotations

import shutil
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


def _copy_mathjax(app: Sphinx) -> None:
    if app.builder.format != "html":
        return
    source = _mathjax_source(app)
    target = Path(app.outdir) / "_static" / "mathjax"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / MATHJAX_ENTRY, target / MATHJAX_ENTRY)
    for part in MATHJAX_PARTS:
        shutil.copytree(source / part, target / part, dirs_exist_ok=True)


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("config-inited", _repository_links)
    app.connect("config-inited", _theme_defaults)
    app.connect("config-inited", _check_mathjax)
    app.connect("html-page-context", _page_assets, priority=900)
    app.connect("builder-inited", _copy_mathjax)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
