"""The repository as its users meet it: the workflows, the version, the licence and citation,
the ``repository.url`` switch (tested with a throwaway address in a small test build), and
the first cell that installs ``bncourse`` in Colab."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import yaml

from bncourse.authoring import (
    COLAB_CELL_ID,
    ROOT,
    add_colab_cell,
    colab_cell,
    repository_url,
    toc_notebooks,
)

sys.path.insert(0, str(ROOT / "book" / "_ext"))
import course_site  # noqa: E402

WORKFLOWS = ROOT / ".github" / "workflows"
CPU_TORCH = "https://download.pytorch.org/whl/cpu"
THROWAWAY = "https://github.com/example-org/bncourse-throwaway"


# ---------------------------------------------------------------- workflows


def _workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict) and data.get("jobs"), f"{name} has no jobs"
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def _runs(data: dict) -> list[str]:
    return [step["run"] for job in data["jobs"].values() for step in job.get("steps", [])
            if "run" in step]


def test_ci_workflow_runs_the_same_ci_script_on_every_push_and_pull_request():
    data = _workflow("ci.yml")
    assert {"push", "pull_request"} <= set(data["on"]), f"ci.yml runs on {data['on']}"
    assert "bash .ci/run" in _runs(data)


@pytest.mark.parametrize("name", ["ci.yml", "pages.yml"])
def test_workflows_install_the_cpu_build_of_torch(name):
    data = _workflow(name)
    env = {key: value for job in data["jobs"].values() for key, value in job.get("env", {}).items()}
    assert CPU_TORCH in env.get("PIP_EXTRA_INDEX_URL", ""), f"{name} would install CUDA torch"


def test_pages_workflow_publishes_the_book_with_its_pdf():
    runs = _runs(_workflow("pages.yml"))
    assert "make book" in runs and "make pdf" in runs, runs


def test_ci_script_runs_the_make_targets():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    order = [line.strip() for line in script.splitlines() if line.strip().startswith("make ")]
    assert order == ["make test", "make book", "make pdf", "make browser"], order


def test_readme_tells_a_linux_learner_how_to_get_cpu_torch():
    assert CPU_TORCH in (ROOT / "README.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------- version, licence, citation


def test_the_version_is_the_same_everywhere():
    import bncourse

    version = course_site.course_version(ROOT)
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    intro = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    changelog = (ROOT / "book" / "changelog.md").read_text(encoding="utf-8")
    assert bncourse.__version__ == version
    assert str(citation["version"]) == version
    assert re.search(r"version\s*=\s*\{" + re.escape(version) + r"\}", intro)
    assert re.search(r"^## (\S+)", changelog, re.M).group(1) == version, (
        "the changelog's newest entry is not the current version")


def test_licence_and_citation_files_state_the_licences():
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "CC BY 4.0" in licence and "MIT License" in licence
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0" and citation["title"] and citation["authors"]
    assert set(citation["license"]) == {"CC-BY-4.0", "MIT"}


# ---------------------------------------------------------------- repository.url


def _config(url: str) -> SimpleNamespace:
    return SimpleNamespace(
        html_theme_options={"repository_url": url, "launch_buttons": {
            "colab_url": "https://colab.research.google.com",
            "binderhub_url": "https://mybinder.org", "notebook_interface": "jupyterlab"}},
        myst_substitutions={})


@pytest.mark.parametrize("url", ["", THROWAWAY])
def test_repository_url_switches_the_buttons_and_the_intro_sentence(url):
    config = _config(url)
    app = SimpleNamespace(confdir=str(ROOT))
    course_site._substitutions(app, config)
    course_site._repository_links(app, config)
    options = config.html_theme_options
    for button in course_site.REPOSITORY_BUTTONS:
        assert options[button] is bool(url)
    assert ("colab_url" in options["launch_buttons"]) is bool(url)
    sentence = config.myst_substitutions["course_repository"]
    if url:
        assert f"]({url})" in sentence
    else:
        assert "http" not in sentence and "ask" in sentence


def _tiny_book(where: Path, url: str) -> Path:
    """A one-chapter book with the course's site extension and a given repository.url."""
    (where / "book").mkdir(parents=True)
    (where / "node_modules").symlink_to(ROOT / "node_modules")
    shutil.copy2(ROOT / "pyproject.toml", where / "pyproject.toml")
    (where / "book" / "intro.md").write_text(
        "# Tiny\n\nThe code: {{ course_repository }}\n", encoding="utf-8")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# One\n\nText."),
                                         nbformat.v4.new_code_cell("1 + 1")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, where / "book" / "one.ipynb")
    (where / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/one\n", encoding="utf-8")
    (where / "_config.yml").write_text(f"""
title: Tiny
only_build_toc_files: true
exclude_patterns: ["node_modules/*", "_build/*"]
execute:
  execute_notebooks: "off"
parse:
  myst_enable_extensions: [substitution]
repository:
  url: "{url}"
  branch: main
launch_buttons:
  notebook_interface: jupyterlab
  colab_url: https://colab.research.google.com
  binderhub_url: https://mybinder.org
sphinx:
  local_extensions:
    course_site: {ROOT / "book" / "_ext"}
  config:
    mathjax_path: mathjax/tex-mml-chtml.js
    nb_ipywidgets_js: {{}}
""", encoding="utf-8")
    result = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build",
                             str(where), "--builder", "html"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return where / "_build" / "html" / "book"


@pytest.mark.slow
@pytest.mark.parametrize("url", ["", THROWAWAY])
def test_a_test_build_shows_repository_colab_and_binder_buttons_only_with_a_url(url, tmp_path):
    pages = _tiny_book(tmp_path, url)
    chapter = (pages / "one.html").read_text(encoding="utf-8")
    intro = (pages / "intro.html").read_text(encoding="utf-8")
    colab = "https://colab.research.google.com/github/example-org/bncourse-throwaway/blob/main"
    if url:
        assert f'href="{THROWAWAY}"' in chapter, "no repository button"
        assert colab in chapter and "mybinder.org/v2/gh/example-org" in chapter, (
            "no Colab or Binder button on the chapter")
        assert f'href="{THROWAWAY}"' in intro, "the intro does not link the repository"
    else:
        assert "colab.research.google.com" not in chapter and "mybinder.org" not in chapter
        assert "github.com" not in chapter
        assert course_site.NO_REPOSITORY in intro


# ---------------------------------------------------------------- the Colab install cell


def _run_cell(source: str, installed: bool) -> list[tuple[str, str]]:
    """Run a cell as IPython would, with ``bncourse`` installed or not; return magic calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    calls: list[tuple[str, str]] = []
    code = TransformerManager().transform_cell(source)
    spec = SimpleNamespace(find_spec=lambda name: object() if installed else None)
    shell = SimpleNamespace(run_line_magic=lambda magic, line: calls.append((magic, line)))
    namespace = {"get_ipython": lambda: shell}
    code = code.replace("import importlib.util", "importlib = SimpleNamespace(util=spec)")
    exec(compile(code, "<cell>", "exec"),  # noqa: S102
         {**namespace, "SimpleNamespace": SimpleNamespace, "spec": spec})
    return calls


def test_the_colab_cell_installs_from_the_repository_only_when_bncourse_is_missing():
    source = colab_cell(THROWAWAY, "main")
    assert _run_cell(source, installed=True) == []
    assert _run_cell(source, installed=False) == [
        ("pip", f'install --quiet "bncourse @ git+{THROWAWAY}@main"')]


def test_without_a_repository_the_colab_cell_says_where_bncourse_comes_from():
    source = colab_cell("", "main")
    assert _run_cell(source, installed=True) == []
    with pytest.raises(ModuleNotFoundError, match="student kit"):
        _run_cell(source, installed=False)


def test_add_colab_cell_puts_one_hidden_cell_first_and_updates_it():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title")])
    add_colab_cell(nb, THROWAWAY)
    add_colab_cell(nb, THROWAWAY + "-moved")
    first = nb.cells[0]
    assert [c.get("id") for c in nb.cells].count(COLAB_CELL_ID) == 1 and len(nb.cells) == 2
    assert first["metadata"]["tags"] == ["remove-cell"]
    assert THROWAWAY + "-moved@main" in first["source"]


@pytest.mark.parametrize("path", toc_notebooks(), ids=[p.stem for p in toc_notebooks()])
def test_every_chapter_starts_with_the_install_cell_for_the_configured_repository(path):
    url, branch = repository_url()
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.get("id") == COLAB_CELL_ID and first.source == colab_cell(url, branch), (
        f"{path.name} does not start with the cell that installs bncourse in Colab: run "
        "`python -m bncourse.authoring colab-cell` (again after changing repository.url)"
    )


def test_axe_core_is_a_pinned_development_dependency_only():
    """The accessibility audit's axe-core comes from the npm registry for the browser tests;
    it is a development dependency (never among what the site serves) at an exact version."""
    package = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    assert "axe-core" in package.get("devDependencies", {})
    assert "axe-core" not in package.get("dependencies", {})
    version = package["devDependencies"]["axe-core"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"axe-core is not pinned: {version!r}"
    entry = lock["packages"]["node_modules/axe-core"]
    assert entry["version"] == version and entry.get("dev") is True
