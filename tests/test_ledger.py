"""The verification ledger (book/_ext/ledger.py): a statement without a check fails the build."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import ledger  # noqa: E402

CONF = """
extensions = ["myst_nb", "sphinx_proof", "ledger"]
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
ledger_tests_dir = "fixture_tests"
exclude_patterns = ["_build", "fixture_tests"]
html_theme = "basic"
"""

TEST_FILE = '''
import pytest

@pytest.mark.verifies("thm-b")
def test_b():
    assert True
'''


def _cell(kind, source, ledger_meta=None):
    cell = {"cell_type": kind, "id": f"c{abs(hash(source)) % 10**8}", "metadata": {},
            "source": source}
    if kind == "code":
        cell.update(outputs=[], execution_count=None)
    if ledger_meta is not None:
        cell["metadata"]["ledger"] = ledger_meta
    return cell


def _notebook(cells):
    return {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


# A 1x1 PNG: MyST-NB wraps a code cell's image output in a figure when the cell names one.
PIXEL = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
         "RU5ErkJggg==")


def _figure_cell(source, name, ledger_meta=None):
    cell = _cell("code", source, ledger_meta)
    cell["metadata"]["mystnb"] = {"figure": {"name": name, "caption": "B rises with A."}}
    cell["outputs"] = [{"output_type": "display_data", "metadata": {},
                        "data": {"image/png": PIXEL, "text/plain": "<Figure>"}}]
    return cell


def _project(tmp_path: Path, *, declare_a=True, declare_c=True, assert_in_cell=True,
             extra_label=None, figure_check="cell") -> Path:
    src = tmp_path / "src"
    (src / "fixture_tests").mkdir(parents=True)
    (src / "conf.py").write_text(CONF)
    (src / "fixture_tests" / "test_fixture.py").write_text(TEST_FILE)
    check = "x = 1\nassert x == 1" if assert_in_cell else "print(1)"
    verifies = ["eq-a"] if declare_a else []
    if extra_label:
        verifies.append(extra_label)
    cells = [
        _cell("markdown", "# Chapter\n\n$$\nc = 1\n$$ (eq-c)\n",
              {"defines": ["eq-c"]} if declare_c else None),
        _cell("markdown", "$$\na = b\n$$ (eq-a)\n\n```{prf:theorem}\n:label: thm-b\n\nA.\n```\n"),
        _cell("code", check, {"verifies": verifies} if verifies else None),
        _figure_cell("b = [1, 2]\nassert b[1] > b[0]", "fig-rise",
                     {"verifies": ["fig-rise"]} if figure_check == "cell" else None),
        _cell("markdown", "```{verification-ledger}\n```\n"),
    ]
    if figure_check == "test":
        (src / "fixture_tests" / "test_figure.py").write_text(
            "import pytest\n\n@pytest.mark.verifies('fig-rise')\ndef test_rise():\n"
            "    assert 2 > 1\n")
    (src / "index.ipynb").write_text(json.dumps(_notebook(cells)))
    return src


def _build(src: Path) -> tuple[int, str, Path]:
    from io import StringIO

    from sphinx.application import Sphinx

    out = src / "_build"
    warnings = StringIO()
    app = Sphinx(str(src), str(src), str(out / "html"), str(out / "doctrees"), "html",
                 status=None, warning=warnings, freshenv=True)
    app.build()
    return app.statuscode, warnings.getvalue(), out / "html" / "index.html"


@pytest.fixture(scope="module")
def complete_build(tmp_path_factory):
    return _build(_project(tmp_path_factory.mktemp("complete")))


def test_a_complete_ledger_builds_without_warnings(complete_build):
    _, warnings, _ = complete_build
    assert "ledger" not in warnings and "verification" not in warnings.lower(), warnings


def test_the_ledger_table_links_every_statement_to_its_check(complete_build):
    _, _, page = complete_build
    html = page.read_text()
    assert "3 labelled statements and 1 figures" in html
    assert "fixture_tests/test_fixture.py::test_b" in html
    assert f'id="{ledger.cell_anchor("index", 2)}"' in html, "the checking cell has no anchor"
    assert f'href="#{ledger.cell_anchor("index", 2)}"' in html
    table = html[html.index("ledger-table"):]
    rows = [table.index(f'href="#{anchor}"') for anchor in ("equation-eq-c", "equation-eq-a",
                                                             "thm-b", "fig-rise")]
    assert rows == sorted(rows), "the table lists the statements in the order the book states them"
    assert f'href="#{ledger.cell_anchor("index", 3)}"' in html, "the figure's check is not linked"
    assert "Fig. 1" in table, "the figure is named by its number"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"declare_a": False}, "'eq-a' names no check"),
        ({"declare_c": False}, "'eq-c' names no check"),
        ({"assert_in_cell": False}, "asserts nothing"),
        ({"extra_label": "eq-missing"}, "'eq-missing', which is not the label"),
        ({"figure_check": "none"}, "'fig-rise' names no check"),
        ({"figure_check": "test"}, "the figure 'fig-rise' must be checked by an asserting cell"),
    ],
)
def test_removing_or_breaking_one_declaration_warns(tmp_path, change, message):
    _, warnings, _ = _build(_project(tmp_path, **change))
    assert message in warnings, warnings


def test_test_declarations_are_read_from_decorators(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n\n@pytest.mark.verifies('eq-1', 'thm-2')\ndef test_y():\n    pass\n"
        "\n@pytest.mark.slow\ndef test_z():\n    pass\n"
    )
    found = ledger.test_declarations(tmp_path / "tests", tmp_path)
    assert [(d.label, d.test) for d in found] == [
        ("eq-1", "tests/test_x.py::test_y"), ("thm-2", "tests/test_x.py::test_y")
    ]


@pytest.mark.parametrize("source, asserts", [
    ("assert_ordered(paired_difference(a, b), sign=1, what='A above B')", True),
    ("assert_indistinguishable(d, what='no difference')", True),
    ("gap = assert_close(x, y)", True),
    ("assert x > 0", True),
    ("print(paired_difference(a, b))", False),
    ("my_assert_ordered(x)", False),
])
def test_a_check_asserts_with_assert_or_a_claims_assertion(tmp_path, source, asserts):
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(_notebook([_cell("code", source, {"verifies": ["eq-x"]})])))
    _, problems = ledger.notebook_declarations(path, "nb")
    assert (not problems) == asserts, problems
