"""Every reference in the repository resolves inside it: `method §N` citations to a section of
docs/method.md, and relative links in the README and docs/ to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("sphere_core", "orchestrator", "sweeps", "bench", "infra", "tests", "docs")
CITATION = re.compile(r"method §(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def texts() -> dict[Path, str]:
    files = [ROOT / "README.md"] + [
        path
        for folder in SOURCES
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".py", ".md", ".yaml", ".sh"} and ".venv" not in path.parts
    ]
    return {path: path.read_text() for path in files}


def test_method_citations_name_sections_of_docs_method() -> None:
    headings = re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", (ROOT / "docs/method.md").read_text(), re.M)
    assert {"1.1", "1.4", "2", "3", "4", "6"} <= set(headings)
    cited = {
        (path.relative_to(ROOT), number)
        for path, text in texts().items()
        for match in CITATION.finditer(text)
        for number in match.groups()
        if number
    }
    assert len(cited) > 20  # the code cites the method throughout
    assert [(str(path), number) for path, number in cited if number not in headings] == []


def test_no_reference_points_at_a_spec_outside_the_repository() -> None:
    """The method is cited as docs/method.md's sections; "spec 1.4" or "spec section 2" named a file that
    only the project's authors had."""
    outside = re.compile(r"\bspec(?:'s)? (?:sections?|§|\d)|spec\.md|sphere-encoder-paper")
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path, text in texts().items()
        if path != Path(__file__).resolve()
        for match in outside.finditer(text)
    ]
    assert found == []


def test_relative_links_in_the_readme_and_docs_point_at_files() -> None:
    broken = []
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in LINK.findall(path.read_text()):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert broken == []
