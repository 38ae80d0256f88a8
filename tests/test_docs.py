"""The README and docs/ cannot rot silently: every relative link resolves to a file of the
repository (and its #anchor to a heading there), and every repository path or `python -m`
module they name in backticks exists in this tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP_DIRS = ("bench", "docs", "experiments", "inventory", "netem", "tests", "trainer")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(rf"^(?:{'|'.join(TOP_DIRS)})/[\w./-]*$")
MODULE = re.compile(r"python3? -m ([\w.]+)")


def slug(heading: str) -> str:
    """A heading's anchor as the repository's markdown renderer makes it."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings (outside code blocks)."""
    text = FENCE.sub("", path.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def code_texts(path: Path) -> list[str]:
    """Every code span's and code block's text of a markdown file."""
    text = path.read_text()
    return FENCE.findall(text) + CODE_SPAN.findall(FENCE.sub("", text))


def named_paths(path: Path) -> set[str]:
    """Repository paths (`netem/tree.py`, `experiments/lab/`) named in a file's code."""
    words = (word.strip(",;:()") for code in code_texts(path) for word in code.split())
    return {word for word in words if REPO_PATH.match(word)}


def named_modules(path: Path) -> set[str]:
    """Modules a file runs as `python -m MODULE` that belong to this repository."""
    found = (module for code in code_texts(path) for module in MODULE.findall(code))
    return {module for module in found if module.split(".")[0] in TOP_DIRS}


def test_there_are_docs_to_check():
    assert (ROOT / "README.md") in DOCS and len(DOCS) >= 2
    named = set().union(*(named_paths(doc) for doc in DOCS))
    # The extraction finds what the README plainly names; a broken pattern would pass vacuously.
    assert {"netem/tree.py", "experiments/axes.py", "experiments/cli/"} <= named


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_links_resolve(doc: Path):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # an absolute URL: not the repository's to check
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.is_file() or not resolved.is_relative_to(ROOT):
            broken.append(target)
        elif anchor and anchor not in anchors(resolved):
            broken.append(target)
    assert not broken, f"{doc.name}: links that resolve to nothing: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_named_paths_exist(doc: Path):
    missing = sorted(path for path in named_paths(doc) if not (ROOT / path).exists())
    assert not missing, f"{doc.name} names paths this tree does not have: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_named_modules_exist(doc: Path):
    def exists(module: str) -> bool:
        base = ROOT.joinpath(*module.split("."))
        return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()

    missing = sorted(module for module in named_modules(doc) if not exists(module))
    assert not missing, f"{doc.name} runs modules this tree does not have: {missing}"


def test_slug_follows_the_renderer():
    assert slug(" The cost model (`wanlab predict`) and the reference") == (
        "the-cost-model-wanlab-predict-and-the-reference"
    )
    assert (
        slug(" Data parallelism, layouts and placement") == "data-parallelism-layouts-and-placement"
    )
