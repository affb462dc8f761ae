"""The bibliography style of the course (pybtex style ``course``, label style ``course``).

* Labels are author-year, like the citations in the text: "Ioffe and Szegedy 2015",
  "Santurkar et al. 2018" (one author: "Frankle 2021"; a letter is added to tell apart two
  works with the same label).
* An arXiv identifier written as ``note = {arXiv:1502.03167}`` becomes the entry's eprint,
  which the style prints as a link to https://arxiv.org/abs/1502.03167.
* A ``\\url{...}`` inside ``howpublished`` or ``note`` becomes the entry's ``url`` (a link),
  instead of being printed as TeX.
"""

from __future__ import annotations

import re

from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle

from bncourse.authoring import author_year  # the same labels as the student kit's citations

_URL = re.compile(r",?\s*\\url\s*\{([^}]*)\}")
_ARXIV_NOTE = re.compile(r"^\s*arXiv:\s*(\d{4}\.\d{4,5}(?:v\d+)?)\s*\.?\s*$", re.IGNORECASE)


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        labels = [author_year(entry) for entry in sorted_entries]
        repeated = {label for label in labels if labels.count(label) > 1}
        suffix: dict[str, int] = {}
        for label in labels:
            if label in repeated:
                suffix[label] = suffix.get(label, 0) + 1
                yield f"{label}{'abcdefghijklmnopqrstuvwxyz'[suffix[label] - 1]}"
            else:
                yield label


class CourseStyle(PlainStyle):
    default_label_style = "course"

    def format_entry(self, label, entry, bib_data=None):
        note = entry.fields.get("note", "")
        match = _ARXIV_NOTE.match(str(note))
        if match and "eprint" not in entry.fields:
            entry.fields["eprint"] = match.group(1)
            del entry.fields["note"]
        for field in ("howpublished", "note"):
            text = str(entry.fields.get(field, ""))
            found = _URL.search(text)
            if found:
                entry.fields.setdefault("url", found.group(1))
                rest = _URL.sub("", text).strip(" ,")
                if rest:
                    entry.fields[field] = rest
                else:
                    del entry.fields[field]
        return super().format_entry(label, entry, bib_data=bib_data)


def register() -> None:
    register_plugin("pybtex.style.labels", "course", AuthorYearLabels, force=True)
    register_plugin("pybtex.style.formatting", "course", CourseStyle, force=True)
