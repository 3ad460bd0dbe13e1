"""The design documents in docs/ and the citations of them in the code.

- No source or documentation file names notes that are not part of this repository (the
  names are assembled below, so this file does not mention them either).
- Every citation ``docs/<file>.md §N`` (also ``§N.M``, ``§N–M``, ``§N, §M``) in a .py, .md,
  .yaml or .sh file points to an existing document with a heading numbered N.
- Inside docs/, cross-references ``<file>.md §N`` and links ``<file>.md#anchor`` resolve, every
  document is listed in docs/README.md, and the repository paths the documents name exist.
- README.md: the paths, links and module names it gives exist; the numbers that describe the code
  are the code's (the bad-input case count, the SEDD flag table's defaults, the console scripts,
  the upstream fixes `FIXES` names) or the pages' that measured them (tolerances, results); its
  Python snippets run as written, and docs/usage.md's compile (and run where self-contained).
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


# ------------------------------------------------------------------------ the top-level README
README = REPO / "README.md"
MODULE = re.compile(r"`(sedd_megatron(?:\.\w+)+)")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _resolves(dotted: str) -> bool:
    """``sedd_megatron.a.b`` names a module or package of the repository, or a name defined or
    imported in the deepest one of them that exists."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:n])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not source.is_file():
            continue
        rest = parts[n:]
        if not rest:
            return True
        name = re.escape(rest[0])
        defined = (
            rf"\b(?:def|class)\s+{name}\b"  # a definition
            rf"|^{name}\s*[=:]"  # a module-level assignment
            rf"|import[^\n]*\b{name}\b|^\s+{name},$"  # an import
            rf"|[\"']{name}[\"']\s*:"  # a lazily imported name ("name": "module")
        )
        return re.search(defined, read(source), re.M) is not None
    return False


@pytest.mark.parametrize("doc", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_module_names_exist(doc):
    path = REPO / doc
    missing = sorted({m for m in MODULE.findall(read(path)) if not _resolves(m)})
    assert not missing, f"{doc} names modules or objects that do not exist: {missing}"


def test_paths_named_in_readme_exist():
    missing = []
    for name in sorted(set(PATH.findall(read(README)))):
        if "/" in name and not list(REPO.glob(name)) and not (REPO / "sedd_megatron").glob(name):
            missing.append(name)
    links = re.findall(r"\]\(((?:docs|examples|tests|configs|benchmarks)/[^)#\s]+)", read(README))
    missing += [link for link in links if not (REPO / link).exists()]
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_readme_links_resolve():
    """Links from README.md to docs/ anchors, and to its own headings."""
    problems, text = [], read(README)
    for target, anchor in re.findall(r"\]\((docs/[A-Za-z0-9_-]+\.md)#([^)\s]+)\)", text):
        anchors = {
            github_anchor(h.lstrip("#"))
            for h in read(REPO / target).splitlines()
            if h.startswith("#")
        }  # noqa: E501
        if anchor not in anchors:
            problems.append(f"{target}#{anchor}")
    own = {github_anchor(h.lstrip("#")) for h in text.splitlines() if h.startswith("#")}
    problems += [f"#{a}" for a in re.findall(r"\]\(#([^)\s]+)\)", text) if a not in own]
    assert not problems, f"README.md links to missing anchors: {problems}"


def test_bad_input_case_count_is_the_tables():
    from tests.test_bad_inputs import CASES

    for path in (README, DOCS / "runtime.md"):
        counts = re.findall(r"runs (\d+) such cases", read(path))
        assert counts, f"{path.name}: the bad-input case count is gone"
        assert counts == [str(len(CASES))] * len(counts), (path.name, counts, len(CASES))


def test_sedd_flag_table_matches_the_parser():
    """Every flag of the SEDD group is in README's table, with the parser's default."""
    import argparse

    from sedd_megatron.training.arguments import add_sedd_args

    parser = add_sedd_args(argparse.ArgumentParser())
    group = next(g for g in parser._action_groups if g.title.startswith("SEDD"))
    text = read(README)
    section = text[text.index("## SEDD flags") :]
    section = section[: section.index("\n## ")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`--"):
            for flag in re.findall(r"`(--[^` ]+)", cells[0]):
                rows[flag.replace("[no-]", "")] = cells[1]
    problems = []
    for action in group._group_actions:
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if flag not in rows:
            problems.append(f"{flag}: not in the table")
            continue
        default = action.default
        if isinstance(action, argparse._StoreFalseAction):
            continue  # --no-X: on unless given
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            values = [float(v) for v in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", rows[flag])]
            if flag == "--sedd-sigma-max":
                values = values[1:]  # the row "--sedd-sigma-min, --sedd-sigma-max": "1e-4, 20"
            if not values or values[0] != float(default):
                problems.append(f"{flag}: table says {rows[flag]!r}, parser {default}")
        elif isinstance(default, str) and f"`{default}`" != rows[flag]:
            problems.append(f"{flag}: table says {rows[flag]!r}, parser {default!r}")
        elif default is True and rows[flag] != "on":
            problems.append(f"{flag}: table says {rows[flag]!r}, parser on")
    assert not problems, "\n".join(problems)


def test_console_scripts_are_setup_pys():
    scripts = set(re.findall(r'"(sedd-[a-z]+)=', read(REPO / "setup.py")))
    assert scripts, "no console scripts found in setup.py"
    for path in (README, DOCS / "usage.md"):
        sentence = re.search(
            r"installs the console scripts (.*?), the same programs", read(path), re.S
        )
        named = set(re.findall(r"`(sedd-[a-z]+)`", sentence.group(1)))
        assert named == scripts, (path.name, named, scripts)


def test_runtime_md_fixes_sentence_matches_fixes():
    from sedd_megatron.runtime.upstream_fixes import FIXES

    text = read(DOCS / "runtime.md")
    letters = dict(re.findall(r"^\| \(([a-z])\) `(\w+)`", text, re.M))
    letters = {name: letter for letter, name in letters.items()}
    assert set(FIXES) <= set(
        letters
    ), f"fixes missing from runtime.md §5: {set(FIXES) - set(letters)}"
    said = re.search(r"`FIXES` names ([^,]+),", text).group(1)
    named = set()
    for first, last in re.findall(r"\(([a-z])\)(?:–\(([a-z])\))?", said):
        named |= {chr(c) for c in range(ord(first), ord(last or first) + 1)}
    assert named == {letters[name] for name in FIXES}, (said, sorted(FIXES))


def test_readme_tolerances_are_numerics_mds():
    intro = read(README).split("## Set-up")[0]
    table = read(DOCS / "numerics.md").split("## 7. Tolerances")[1]
    for number in ("1e-5", "1e-3", "4e-4"):
        assert number in intro and number in table, number


def test_readme_results_numbers_come_from_the_linked_pages():
    text = read(README)
    results = text[text.index("## Results") :]
    results = results[: results.index("\n## ", 1)]
    pages = read(DOCS / "paper_ordering.md") + read(DOCS / "benchmarks.md")
    numbers = re.findall(
        r"\d[\d,]*\.?\d*×?",
        re.sub(r"\([^)]*\]\([^)]*\)\)|\[[^\]]*\]\([^)]*\)|`[^`]*`", "", results),
    )  # noqa: E501
    missing = [
        n for n in numbers if n.rstrip("×.") not in pages and n not in ("1e-5", "2", "512,000")
    ]
    assert not missing, f"README results numbers not in docs: {missing}"


def _free_names(source: str) -> set[str]:
    import ast
    import builtins

    tree = ast.parse(source)
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
            bound |= {a.arg for a in node.args.args} if isinstance(node, ast.FunctionDef) else set()
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
    loads = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    return loads - bound


def _paths_missing(source: str) -> list[str]:
    strings = re.findall(r"\"([\w./-]+/[\w./-]*)\"", source)
    return [s for s in strings if not (REPO / s).exists()]


def test_python_snippets_compile_and_run():
    """README's snippets run as written (each is self-contained); docs/usage.md's compile, and
    run where they name nothing undefined and no missing path."""
    to_run = []
    for path in (README, DOCS / "usage.md"):
        for i, block in enumerate(PYTHON_BLOCK.findall(read(path))):
            compile(block, f"{path.name} snippet {i}", "exec")
            free, missing = _free_names(block), _paths_missing(block)
            if path == README:
                assert not free and not missing, f"README snippet {i}: undefined {free}, {missing}"
            if not free and not missing:
                to_run.append(block)
    assert to_run
    import subprocess
    import sys

    program = "\n".join(f"exec(compile({b!r}, 'snippet', 'exec'), {{}})" for b in to_run)
    done = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
