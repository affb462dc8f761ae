"""Numbers in the chapters' prose come from the outputs: glued, or allowlisted with a reason.

The scanner reads every markdown cell of every chapter listed in ``_toc.yml`` and reports each
number that is neither inside a glue role nor in the chapter's allowlist
(``tests/prose_numbers/<notebook stem>.yml``) or the global one (``global.yml``).

What counts as a number:

* in text: a decimal (``0.005``), a number in scientific notation (``3.4e-5``), a percentage
  (``72%``), a ratio (``1.8x``), and every integer from 10 up;
* inside math (``$...$``, ``$$...$$``): decimals and numbers in scientific notation only, since
  integers there are part of the formula's structure (``m - 1``, ``x^2``, ``10^{-5}``).

What is left alone: integers below 10 in text; code spans and fenced code; roles
(``{glue:text}``, ``{eq}``, ``{numref}``, ``{cite}``, ...) with their targets; directive option
lines (``:label:``); label targets and equation labels; link targets; HTML comments; numbers
that are part of a word or name (``BatchNorm2d``, ``float32``, ``x_1``, ``CIFAR-10``); the number
after "chapter", "section", "figure", "equation", "exercise", "theorem", "algorithm",
"table" and the like; and years (1950 to 2099).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from bncourse.authoring import toc_notebooks

ROOT = Path(__file__).resolve().parent.parent
ALLOWLISTS = Path(__file__).resolve().parent / "prose_numbers"

_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_ROLE = re.compile(r"\{[\w:.-]+\}`[^`]*`")
_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_OPTION = re.compile(r"^:[\w-]+:.*$", re.MULTILINE)
_TARGET = re.compile(r"^\([\w:.-]+\)=\s*$", re.MULTILINE)
_EQ_LABEL = re.compile(r"\$\$\s*\([\w:.-]+\)")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_URL = re.compile(r"https?://\S+")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.DOTALL)
_INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$", re.DOTALL)
_ENV_MATH = re.compile(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.DOTALL)
_NUMBER = re.compile(
    r"(?<![\w.\-−])(?P<num>[-−]?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+−]?\d+)?)"
    r"(?P<unit>%|x(?![\w])|×)?(?![\w])"
)
_REFERENCE_WORDS = re.compile(
    r"(?:chapter|chapters|section|sections|figure|figures|fig\.|equation|equations|eq\.|"
    r"exercise|exercises|theorem|proposition|lemma|corollary|algorithm|table|step|part|"
    r"appendix|version|v)\s*$",
    re.IGNORECASE,
)


def _is_number_in_text(num: str, unit: str | None, before: str) -> bool:
    plain = num.replace(",", "").replace("−", "-").lstrip("-")
    if _REFERENCE_WORDS.search(before):
        return False
    if unit or "." in plain or "e" in plain.lower():
        return True
    value = int(plain)
    if 1950 <= value <= 2099 and len(plain) == 4:
        return False
    return value >= 10


def _is_number_in_math(num: str) -> bool:
    plain = num.lower()
    return "." in plain or "e" in plain


def prose_numbers(markdown: str) -> list[tuple[str, str]]:
    """Every number of ``markdown`` that must be glued or allowlisted, with its context."""
    text = markdown
    # Fenced code goes; a directive's fence stays, since its body is prose.
    text = _FENCE.sub(
        lambda m: m.group(0) if m.group("info").strip().startswith("{")
        and not m.group("info").strip().startswith("{code") else "", text
    )
    text = re.sub(r"^`{3,}\{[^}]*\}.*$", "", text, flags=re.MULTILINE)  # directive headers
    for pattern in (_COMMENT, _ROLE, _CODE, _OPTION, _TARGET, _EQ_LABEL, _LINK_TARGET, _URL):
        text = pattern.sub(" ", text)
    found: list[tuple[str, str]] = []
    math_spans: list[str] = []

    def take_math(match: re.Match[str]) -> str:
        math_spans.append(match.group(0))
        return " ⟨math⟩ "

    for pattern in (_DISPLAY_MATH, _ENV_MATH, _INLINE_MATH):
        text = pattern.sub(take_math, text)
    for span in math_spans:
        body = re.sub(r"\\[A-Za-z]+", " ", span)
        for m in _NUMBER.finditer(body):
            if _is_number_in_math(m.group("num")):
                found.append((m.group("num"), span.strip()[:80]))
    for m in _NUMBER.finditer(text):
        if _is_number_in_text(m.group("num"), m.group("unit"), text[max(0, m.start() - 16):
                                                                      m.start()]):
            context = text[max(0, m.start() - 40): m.end() + 20].replace("\n", " ")
            found.append((m.group("num") + (m.group("unit") or ""), context.strip()))
    return found


def _allowlist(path: Path) -> set[str]:
    if not path.exists():
        return set()
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    allowed = set()
    for entry in entries:
        if not (isinstance(entry, dict) and entry.get("number") and entry.get("reason")):
            raise ValueError(f"{path.name}: every entry needs a number and a reason: {entry!r}")
        allowed.add(str(entry["number"]))
    return allowed


def _normal(number: str) -> str:
    return number.replace("−", "-").replace(",", "")


CHAPTERS = [nb for nb in toc_notebooks() if nb.suffix == ".ipynb"]


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[nb.stem for nb in CHAPTERS])
def test_every_number_in_the_prose_is_glued_or_allowlisted(notebook: Path):
    allowed = {_normal(n) for n in _allowlist(ALLOWLISTS / "global.yml")
               | _allowlist(ALLOWLISTS / f"{notebook.stem}.yml")}
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    offenders = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        seen = set()
        for number, context in prose_numbers(source):
            if _normal(number) not in allowed and number not in seen:
                seen.add(number)
                offenders.append(f"cell {index}: {number!r} in “{context}”")
    assert not offenders, (
        f"{len(offenders)} number(s) in {notebook.name} are typed by hand: glue them from the "
        f"cell that computes them, or add them to tests/prose_numbers/{notebook.stem}.yml with "
        f"a reason:\n" + "\n".join(offenders)
    )


def test_every_allowlist_names_a_chapter_and_gives_reasons():
    stems = {nb.stem for nb in CHAPTERS} | {"global"}
    for path in ALLOWLISTS.glob("*.yml"):
        assert path.stem in stems, f"{path.name} is the allowlist of no chapter"
        _allowlist(path)  # raises on an entry without a reason


@pytest.mark.parametrize(
    "markdown, expected",
    [
        ("the spread is 0.005, above", ["0.005"]),
        ("a factor of 2.5 to 3 per layer", ["2.5"]),
        ("accuracy 72.6% on 360 images", ["72.6%", "360"]),
        ("compiled is 1.8x torch", ["1.8x"]),
        ("error 3.4e-5 measured", ["3.4e-5"]),
        ("$\\hat{x} \\approx 0.999995$ by hand", ["0.999995"]),
        ("$m - 1$ and $x^{2}$ and $10^{-5}$", []),
        ("glued {glue:text}`formula-spread:.3f` and {eq}`eq-formula-12`", []),
        ("code `x[:, 12]` and BatchNorm2d and float32 and CIFAR-10", []),
        ("see chapter 3, figure 12 and equation 14; {cite}`frankle2021training` 2021", []),
        ("three seeds, m = 4, batch of 8", []),
        ("```python\nprint(0.123)\n```\nafter", []),
        ("```{exercise} Title\n:label: ex-12\n\nCompute 0.25 here\n```", ["0.25"]),
        ("$$\na = 1.5\n$$ (eq-x-12)", ["1.5"]),
        ("$a = (6-2)/\\sqrt{4 + 10^{-5}}\n\\approx 2$ and $y = 1.5$", ["1.5"]),
    ],
)
def test_the_scanner_finds_exactly_the_computed_looking_numbers(markdown, expected):
    assert [n for n, _ in prose_numbers(markdown)] == expected
