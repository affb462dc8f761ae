"""The verification ledger: every labelled statement of the book names the check that proves it.

A *statement* is a labelled display equation (``$$ ... $$ (eq-label)``), a
``prf:theorem``, ``prf:proposition``, ``prf:lemma`` or ``prf:corollary`` (these must carry a
``:label:``), or a named figure (a figure states a finding in its caption, so the finding is
checked like an equation). A statement is declared in one of three ways (CONTRIBUTING.md):

* an executed check: a notebook code cell whose metadata holds
  ``"ledger": {"verifies": [labels]}``; the cell must assert (``assert``, or
  ``assert_close``, ``assert_ordered`` or ``assert_indistinguishable`` of
  ``bncourse.claims``), and the page gives it an anchor the ledger links to;
* a test: a function or class in ``tests/`` decorated ``@pytest.mark.verifies(labels)``;
* a definition: a notebook markdown cell whose metadata holds ``"ledger": {"defines": [labels]}``.

At the end of reading, a statement without a declaration, a declaration naming a label that
no statement has, a checking cell that asserts nothing, an unlabelled theorem-like statement,
an unnamed figure and a figure checked otherwise than by an asserting cell of its own chapter
are each a warning (fatal under ``-W``). The ``{verification-ledger}`` directive
(on ``book/verification.md``) becomes a table: one row per statement, with its number and a
link to it, the kind of check and a link to each checking cell or the test's name.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

#: sphinx-proof kinds whose statements must be checked.
CHECKED_PROOF_KINDS = ("theorem", "proposition", "lemma", "corollary")
_ASSERTS = re.compile(r"(^|\W)(assert\s|assert_(close|ordered|indistinguishable)\()",
                      re.MULTILINE)


@dataclass(frozen=True)
class Declaration:
    """One declaration: ``label`` is checked by ``kind`` ("cell", "test" or "definition")."""

    label: str
    kind: str
    docname: str = ""  # the chapter, for cells and definitions
    cell_index: int = -1  # the notebook cell, for cells and definitions
    test: str = ""  # "tests/test_x.py::test_name", for tests


def cell_anchor(docname: str, cell_index: int) -> str:
    """The HTML id given to a checking cell of ``docname``."""
    return f"ledger-{re.sub(r'[^a-z0-9]+', '-', docname.lower()).strip('-')}-cell-{cell_index}"


# --------------------------------------------------------------------------------------
# Collecting declarations
# --------------------------------------------------------------------------------------


def _labels(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"{where}: a ledger entry must be a label or a list of labels, got {value!r}")


def notebook_declarations(path: Path, docname: str) -> tuple[list[Declaration], list[str]]:
    """The declarations in a notebook's cell metadata, and the problems found in them."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    found: list[Declaration] = []
    problems: list[str] = []
    for index, cell in enumerate(nb.get("cells", [])):
        ledger = cell.get("metadata", {}).get("ledger")
        if ledger is None:
            continue
        where = f"{docname}, cell {index}"
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        if not isinstance(ledger, dict) or set(ledger) - {"verifies", "defines"}:
            problems.append(f"{where}: the ledger metadata must be a mapping with the keys "
                            f"'verifies' and/or 'defines', got {ledger!r}")
            continue
        try:
            verifies = _labels(ledger.get("verifies", []), where)
            defines = _labels(ledger.get("defines", []), where)
        except ValueError as error:
            problems.append(str(error))
            continue
        if verifies and cell.get("cell_type") != "code":
            problems.append(f"{where}: only a code cell can verify a statement")
            continue
        if verifies and not _ASSERTS.search(source):
            problems.append(f"{where} declares that it verifies {', '.join(verifies)} but "
                            f"asserts nothing (a check must assert, not only print)")
        found += [Declaration(label, "cell", docname, index) for label in verifies]
        found += [Declaration(label, "definition", docname, index) for label in defines]
    return found, problems


def _verifies_labels(decorator: ast.expr) -> list[str] | None:
    """The labels of ``@pytest.mark.verifies("a", "b")``, or None for another decorator."""
    if not isinstance(decorator, ast.Call):
        return None
    func = decorator.func
    if not (isinstance(func, ast.Attribute) and func.attr == "verifies"):
        return None
    labels = []
    for arg in decorator.args:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            labels.append(arg.value)
    return labels


def test_declarations(tests_dir: Path, root: Path) -> list[Declaration]:
    """The ``@pytest.mark.verifies`` declarations of the test files under ``tests_dir``."""
    found = []
    for path in sorted(tests_dir.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for decorator in node.decorator_list:
                labels = _verifies_labels(decorator)
                for label in labels or []:
                    found.append(Declaration(label, "test", test=f"{rel}::{node.name}"))
    return found


def ledger_problems(
    statements: dict[str, tuple[str, str]], declarations: list[Declaration]
) -> list[str]:
    """What is wrong with the ledger: statements without a check, checks of no statement.

    ``statements`` maps each label to (docname, kind).
    """
    declared = {d.label for d in declarations}
    problems = []
    for label, (docname, kind) in sorted(statements.items()):
        if label not in declared:
            problems.append(
                f"{docname}: the {kind} '{label}' names no check in the verification ledger "
                f"(declare an asserting cell, a @pytest.mark.verifies test or a definition)"
            )
    for d in declarations:
        if d.label not in statements:
            where = f"{d.docname}, cell {d.cell_index}" if d.docname else d.test
            problems.append(f"{where}: the ledger names '{d.label}', which is not the label of "
                            f"any equation or theorem-like statement of the book")
    return problems


# --------------------------------------------------------------------------------------
# Sphinx hooks
# --------------------------------------------------------------------------------------


def _env_data(env: BuildEnvironment) -> dict[str, Any]:
    if not hasattr(env, "ledger_data"):
        env.ledger_data = {"declarations": {}, "problems": {}, "proofs": {}, "unlabelled": {},
                           "order": {}, "figures": {}}
    return env.ledger_data


def _purge(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    data = _env_data(env)
    for key in data:
        data[key].pop(docname, None)


def _merge(app: Sphinx, env: BuildEnvironment, docnames: set[str], other: BuildEnvironment):
    data, theirs = _env_data(env), _env_data(other)
    for key in data:
        for docname in docnames:
            if docname in theirs[key]:
                data[key][docname] = theirs[key][docname]


def _read(app: Sphinx, doctree: nodes.document) -> None:
    env = app.env
    docname = env.docname
    data = _env_data(env)
    path = Path(env.doc2path(docname))
    declarations: list[Declaration] = []
    problems: list[str] = []
    if path.suffix == ".ipynb":
        declarations, problems = notebook_declarations(path, docname)
    data["declarations"][docname] = declarations
    data["problems"][docname] = problems
    checking = {d.cell_index for d in declarations if d.kind == "cell"}
    for container in doctree.findall(nodes.container):
        if container.get("nb_element") == "cell_code" and container.get("cell_index") in checking:
            container["ids"].append(cell_anchor(docname, container["cell_index"]))
    proofs, unlabelled, order, figures = {}, [], {}, []
    for node in doctree.findall(nodes.Element):
        if isinstance(node, nodes.math_block) and node.get("label"):
            order[node["label"]] = len(order)
        if isinstance(node, nodes.figure):
            if node.get("names"):
                figures.append(node["names"][0])
                order[node["names"][0]] = len(order)
            else:
                unlabelled.append("figure")
            continue
        kind = node.get("realtype") if "countertype" in node.attributes else None
        if kind not in CHECKED_PROOF_KINDS:
            continue
        order[node.get("label", "")] = len(order)
        label = node.get("label", "")
        if re.fullmatch(rf"{kind}-\d+", label):
            unlabelled.append(kind)
        else:
            proofs[label] = kind
    data["proofs"][docname] = proofs
    data["figures"][docname] = figures
    data["unlabelled"][docname] = unlabelled
    data["order"][docname] = order  # the statements in the order the chapter states them


def statements(env: BuildEnvironment) -> dict[str, tuple[str, str]]:
    """Every labelled statement of the book: label -> (docname, kind)."""
    found: dict[str, tuple[str, str]] = {}
    for label, (docname, _line) in env.get_domain("math").data.get("objects", {}).items():
        found[label] = (docname, "equation")
    for docname, proofs in _env_data(env)["proofs"].items():
        for label, kind in proofs.items():
            found[label] = (docname, kind)
    for docname, figures in _env_data(env)["figures"].items():
        for label in figures:
            found[label] = (docname, "figure")
    return found


def figure_problems(
    statements: dict[str, tuple[str, str]], declarations: list[Declaration]
) -> list[str]:
    """Figures whose finding is not asserted by an executed cell of their own chapter.

    A figure is drawn from its chapter's data, so a test elsewhere, or a definition, cannot
    check what its caption says about that data.
    """
    problems = []
    for label, (docname, kind) in sorted(statements.items()):
        if kind != "figure":
            continue
        checks = [d for d in declarations if d.label == label]
        if checks and not any(d.kind == "cell" and d.docname == docname for d in checks):
            problems.append(f"{docname}: the figure '{label}' must be checked by an asserting "
                            f"cell of its chapter (its caption states a finding of the "
                            f"chapter's data), not only by "
                            f"{', '.join(sorted({d.kind for d in checks}))}")
    return problems


def all_declarations(app: Sphinx) -> list[Declaration]:
    data = _env_data(app.env)
    root = Path(app.confdir)
    declarations = [d for docname in sorted(data["declarations"])
                    for d in data["declarations"][docname]]
    return declarations + test_declarations(root / app.config.ledger_tests_dir, root)


def _check(app: Sphinx, env: BuildEnvironment) -> None:
    data = _env_data(env)
    for docname in sorted(data["problems"]):
        for problem in data["problems"][docname]:
            logger.warning(problem, type="ledger", location=docname)
    for docname in sorted(data["unlabelled"]):
        for kind in data["unlabelled"][docname]:
            what = "a figure has no name" if kind == "figure" else f"a prf:{kind} has no :label:"
            logger.warning(f"{what}, so the ledger cannot name its check",
                           type="ledger", location=docname)
    found, declarations = statements(env), all_declarations(app)
    for problem in ledger_problems(found, declarations) + figure_problems(found, declarations):
        logger.warning(problem, type="ledger")


# --------------------------------------------------------------------------------------
# The Verification page
# --------------------------------------------------------------------------------------


class ledger_table(nodes.General, nodes.Element):
    """Placeholder for the table, filled in once every chapter has been read."""


class VerificationLedgerDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        return [ledger_table()]


def _statement_ref(label: str, kind: str) -> nodes.Node:
    if kind == "figure":
        ref = pending_xref("", refdomain="std", reftype="numref", reftarget=label,
                           refexplicit=False, refwarn=True)
        ref += nodes.literal(label, label)
        return ref
    if kind == "equation":
        ref = pending_xref("", refdomain="math", reftype="eq", reftarget=label,
                           refexplicit=False, refwarn=True)
        ref += nodes.Text(label)
    else:
        ref = pending_xref("", refdomain="prf", reftype="ref", reftarget=label,
                           refexplicit=False, refwarn=True)
        ref += nodes.literal(label, label)
    return ref


def _para(*children: nodes.Node) -> nodes.paragraph:
    para = nodes.paragraph()
    para.extend(children)
    return para


class FillLedgerTable(SphinxPostTransform):
    """Builds the table before references are resolved, so its links resolve like any other."""

    default_priority = 5

    def run(self, **kwargs: Any) -> None:
        tables = list(self.document.findall(ledger_table))
        if not tables:
            return
        env, app = self.env, self.app
        found = statements(env)
        by_label: dict[str, list[Declaration]] = {}
        for d in all_declarations(app):
            by_label.setdefault(d.label, []).append(d)
        titles = {docname: env.titles[docname].astext() for docname in env.titles}
        order = {docname: i for i, docname in enumerate(_doc_order(env))}
        within = _env_data(env)["order"]
        rows = sorted(found.items(), key=lambda kv: (
            order.get(kv[1][0], 1 << 30), within.get(kv[1][0], {}).get(kv[0], 1 << 30), kv[0]))
        kinds = {"cell": 0, "test": 0, "definition": 0}
        table = nodes.table(classes=["ledger-table"])
        group = nodes.tgroup(cols=4)
        table += group
        for width in (14, 22, 16, 48):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row(["Statement", "Chapter", "Kind", "Checked by"])
        body = nodes.tbody()
        group += body
        for label, (docname, kind) in rows:
            decls = by_label.get(label, [])
            for d in {d.kind for d in decls}:
                kinds[d] += 1
            how = ", ".join(sorted({
                {"cell": "executed check", "test": "test", "definition": "definition"}[d.kind]
                for d in decls
            })) or "none"
            checks = nodes.paragraph()
            for i, d in enumerate(decls):
                if i:
                    checks += nodes.Text("; ")
                if d.kind == "test":
                    checks += nodes.literal(d.test, d.test)
                elif d.kind == "definition":
                    checks += nodes.Text("a definition (nothing to prove)")
                else:
                    uri = app.builder.get_relative_uri(self.env.docname, d.docname)
                    anchor = cell_anchor(d.docname, d.cell_index)
                    checks += nodes.reference("", f"executed cell {d.cell_index}",
                                              refuri=f"{uri}#{anchor}", internal=True)
            row = nodes.row()
            for cell_content in (
                _para(_statement_ref(label, kind)),
                _para(nodes.Text(titles.get(docname, docname))),
                _para(nodes.Text(f"{kind}: {how}")),
                checks,
            ):
                entry = nodes.entry()
                entry += cell_content
                row += entry
            body += row
        n_figures = sum(1 for _, (_, kind) in rows if kind == "figure")
        summary = nodes.paragraph(text=(
            f"{len(rows) - n_figures} labelled statements and {n_figures} figures: "
            f"{kinds['cell']} checked by an executed cell of their chapter, {kinds['test']} by "
            f"a named test, {kinds['definition']} declared as definitions (a statement may "
            f"have several checks)."
        ))
        for placeholder in tables:
            placeholder.replace_self([summary.deepcopy(), table.deepcopy()])

    @staticmethod
    def _row(texts: list[str]) -> nodes.row:
        row = nodes.row()
        for text in texts:
            entry = nodes.entry()
            entry += nodes.paragraph(text=text)
            row += entry
        return row


def _doc_order(env: BuildEnvironment) -> list[str]:
    """The documents in reading order of the table of contents."""
    order: list[str] = []

    def walk(docname: str) -> None:
        if docname in order:
            return
        order.append(docname)
        for child in env.toctree_includes.get(docname, []):
            walk(child)

    walk(env.config.root_doc)
    return order


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("ledger_tests_dir", "tests", "env")
    app.add_node(ledger_table)
    app.add_directive("verification-ledger", VerificationLedgerDirective)
    app.add_post_transform(FillLedgerTable)
    app.connect("doctree-read", _read)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-check-consistency", _check)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
