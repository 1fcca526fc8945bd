"""The docs' links between themselves land: every link from one Markdown file of
the repository to another (README.md, BUILD.md, docs/) names a file that exists
and, with a #fragment, a heading in it (GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "BUILD.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) where target is a relative path, with or without a #fragment.
_LINK = re.compile(r"\]\(([^)\s:]+?)(?:#([^)\s]+))?\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # no headings inside code blocks
    return {anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def test_anchor_is_githubs():
    assert anchor("Run of 2026-12-07, 08:43 UTC") == "run-of-2026-12-07-0843-utc"
    assert anchor("Input throughput: `bench.py`") == "input-throughput-benchpy"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_between_the_docs_lands(doc):
    broken = []
    for target, fragment in _LINK.findall(doc.read_text()):
        path = (doc.parent / target).resolve()
        if path.suffix != ".md":
            continue
        if not path.is_file():
            broken.append(f"{target}: no such file")
        elif fragment and fragment not in anchors(path):
            broken.append(f"{target}#{fragment}: no such heading")
    assert not broken, broken
