"""The design documents in docs/ and the citations of them in the code.

- No source or documentation file names notes that are not part of this repository (the
  names are assembled below, so this file does not mention them either).
- Every citation ``docs/<file>.md §N`` (also ``§N.M``, ``§N–M``, ``§N, §M``) in a .py, .md,
  .yaml or .sh file points to an existing document with a heading numbered N.
- Inside docs/, cross-references ``<file>.md §N`` and links ``<file>.md#anchor`` resolve, every
  document is listed in docs/README.md, and the repository paths the documents name exist.
"""

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SUFFIXES = (".py", ".md", ".yaml", ".yml", ".sh", ".sbatch")
SKIP_DIRS = {".venv", ".git", "runs", "__pycache__", ".pytest_cache", ".ruff_cache", "build"}

# Notes that once lived outside the repository; no file may cite them.
MISSING_NOTES = tuple(
    a + "_" + b for a, b in (("SEDD", "SPEC"), ("MCORE", "ON_CPU"), ("OFFLINE", "ASSETS"))
) + ("GPU" + "_CHECKS",)

_NUMBER = r"\d+(?:\.\d+)*"
_SECTIONS = rf"(?:,?\s*§\s*{_NUMBER}\.?(?:\s*[-–]\s*{_NUMBER})?)+"
CITATION = re.compile(rf"docs/([A-Za-z0-9_-]+\.md)\s*({_SECTIONS})")
LOCAL_CITATION = re.compile(rf"(?<![\w/])([A-Za-z0-9_-]+\.md)\s*({_SECTIONS})")
SECTION = re.compile(rf"§\s*({_NUMBER})(?:\s*[-–]\s*({_NUMBER}))?")
HEADING = re.compile(rf"^#{{2,6}}\s+({_NUMBER})\.?\s")
LINK = re.compile(r"\]\(([A-Za-z0-9_-]+\.md)#([^)\s]+)\)")
PATH = re.compile(r"`([A-Za-z0-9_*./-]+\.(?:py|md|yaml|sh))`")


def repo_files():
    """The .py/.md/.yaml/.sh files of the repository (outside .venv, .git, runs/)."""
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            if name.endswith(SUFFIXES):
                yield Path(root) / name


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def numbered_headings(doc: Path) -> set[str]:
    """The section numbers of a document's headings: '## 3. Title' -> '3', '### 3.4 T' -> '3.4'."""
    return {m.group(1) for line in read(doc).splitlines() if (m := HEADING.match(line))}


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading text."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def cited_sections(sections: str) -> list[str]:
    """'§1–5' -> ['1', ..., '5']; '§4.1, §6.1' -> ['4.1', '6.1']."""
    out = []
    for first, last in SECTION.findall(sections):
        first, last = first.rstrip("."), last.rstrip(".")
        if last and "." not in first and "." not in last:
            out += [str(n) for n in range(int(first), int(last) + 1)]
        else:
            out += [first] + ([last] if last else [])
    return out


def broken(path: Path, pattern: re.Pattern, folder: Path) -> tuple[list[str], int]:
    """Citations of ``pattern`` in ``path`` that do not resolve, and how many were checked."""
    problems, checked = [], 0
    for lineno, line in enumerate(read(path).splitlines(), 1):
        for match in pattern.finditer(line):
            doc = folder / match.group(1)
            where = f"{path.relative_to(REPO)}:{lineno}: {match.group(0).strip()}"
            if not doc.is_file():
                problems.append(f"{where} (no such document)")
                continue
            headings = numbered_headings(doc)
            for number in cited_sections(match.group(2)):
                checked += 1
                if number not in headings:
                    problems.append(f"{where} (no section {number} in docs/{doc.name})")
    return problems, checked


def test_no_file_cites_notes_outside_the_repository():
    offenders = []
    for path in repo_files():
        for lineno, line in enumerate(read(path).splitlines(), 1):
            for name in MISSING_NOTES:
                if name in line:
                    offenders.append(f"{path.relative_to(REPO)}:{lineno}: {name}")
    assert not offenders, "files cite notes that are not in the repository:\n" + "\n".join(
        offenders
    )


def test_docs_citations_point_to_existing_sections():
    problems, checked = [], 0
    for path in repo_files():
        found, count = broken(path, CITATION, DOCS)
        problems += found
        checked += count
    assert not problems, "citations of docs/ that do not resolve:\n" + "\n".join(problems)
    assert checked >= 20, f"only {checked} docs/ section citations found: is the pattern right?"


def test_cross_references_inside_docs_resolve():
    problems = []
    for doc in sorted(DOCS.glob("*.md")):
        found, _ = broken(doc, LOCAL_CITATION, DOCS)
        problems += found
        for lineno, line in enumerate(read(doc).splitlines(), 1):
            for target, anchor in LINK.findall(line):
                target_path = DOCS / target
                if not target_path.is_file():
                    problems.append(f"docs/{doc.name}:{lineno}: no document {target}")
                    continue
                anchors = {
                    github_anchor(line.lstrip("#"))
                    for line in read(target_path).splitlines()
                    if line.startswith("#")
                }
                if anchor not in anchors:
                    problems.append(f"docs/{doc.name}:{lineno}: no anchor #{anchor} in {target}")
    assert not problems, "\n".join(problems)


def test_index_lists_every_document():
    index = read(DOCS / "README.md")
    missing = [d.name for d in DOCS.glob("*.md") if d.name != "README.md" and d.name not in index]
    assert not missing, f"docs/README.md does not list {missing}"


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_paths_named_in_docs_exist(doc):
    """Every repository file a document names in backticks exists (``graph.py`` paths relative
    to the package are looked up under sedd_megatron/; globs must match something)."""
    missing = []
    for name in sorted(set(PATH.findall(read(DOCS / doc)))):
        if "/" not in name:
            continue  # a bare file name (config.json, ...) is not a repository path
        candidates = [REPO / name, REPO / "sedd_megatron" / name]
        if not any(list(c.parent.glob(c.name)) for c in candidates):
            missing.append(name)
    assert not missing, f"docs/{doc} names paths that do not exist: {missing}"
