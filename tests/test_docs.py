"""The documentation: every relative link in README.md and docs/*.md resolves (file and heading), README
stays a front door (at most 350 lines), and no file cites a specification outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_README_LINES = 350

_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`+[^`]*`+")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every markdown file under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks (a ``# comment`` in a bash block is no heading)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: links and inline markup reduced to their text, lower case,
    every character but letters, digits, ``-``, ``_`` and spaces dropped, each space a ``-``."""
    text = _MD_LINK.sub(r"\1", heading).lower()
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a markdown text's headings; a repeated slug gets ``-1``, ``-2``, ... as on GitHub."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in prose_lines(text):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(text: str) -> list[str]:
    """Link targets of a markdown text that point into the repository (no scheme, no absolute path)."""
    prose = _INLINE_CODE.sub("", "\n".join(prose_lines(text)))
    targets = [m.group(1) for m in _LINK.finditer(prose)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("/")]


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``path`` whose file does not exist or whose ``#anchor`` names no heading of
    a markdown file, each as ``target (why)``."""
    broken = []
    for target in relative_links(path.read_text(encoding="utf-8")):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif root.resolve() not in dest.parents and dest != root.resolve():
            broken.append(f"{target} (outside the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading with that anchor)")
    return broken


# -- the checker itself, on small cases, so that the real checks can fail ----------------------------

@pytest.mark.parametrize(("heading", "expected"), [
    ("The search: `sycam-dsl synth`", "the-search-sycam-dsl-synth"),
    ("Average Drop % (lower is better)", "average-drop--lower-is-better"),
    ("The paper's experiments (E1-E3)", "the-papers-experiments-e1-e3"),
    ("Terminals (`sycam_dsl.cam.compute.compute_terminals`)", "terminals-sycam_dslcamcomputecompute_terminals"),
    ("See [the docs](docs/x.md) now", "see-the-docs-now"),
])
def test_slug_follows_githubs_rules(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_checker_finds_broken_files_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Part one\n\n## Part one\n", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#part-one) [ok](docs/a.md#part-one-1) [ok](#top)\n"
        "[bad file](docs/missing.md) [bad anchor](docs/a.md#part-two) ![bad image](docs/x.png)\n"
        "[web](https://example.com) `[code](nowhere.md)`\n\n# Top\n\n```bash\n# not a heading\n"
        "[in code](nowhere.md)\n```\n[bad local](#not-a-heading)\n", encoding="utf-8")
    assert broken_links(readme, tmp_path) == [
        "docs/missing.md (no such file)", "docs/a.md#part-two (no heading with that anchor)",
        "docs/x.png (no such file)", "#not-a-heading (no heading with that anchor)"]


# -- the repository's documents ------------------------------------------------------------------------

@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_docs_have_links_to_check() -> None:
    """The link test is not vacuous: README links into docs/, headings included."""
    links = relative_links((ROOT / "README.md").read_text(encoding="utf-8"))
    assert any(t.startswith("docs/") and "#" in t for t in links)


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def _files_citing_a_spec() -> list[str]:
    needle = re.compile(r"\b" + "SPE" + r"C\b")  # assembled, so that this file does not match itself
    paths = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    for folder in ("sycam_dsl", "tests", "benchmarks"):
        paths += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".sh", ".json", ".sy"}]
    return sorted(str(p.relative_to(ROOT)) for p in paths if p.is_file()
                  and needle.search(p.read_text(encoding="utf-8", errors="replace")))


def test_no_citation_of_an_outside_specification_in_docs() -> None:
    assert [p for p in _files_citing_a_spec() if p == "README.md" or p.startswith("docs/")] == []


def test_no_citation_of_an_outside_specification() -> None:
    assert _files_citing_a_spec() == []


_CODE_CITATION = re.compile(r"docs/([A-Za-z_-]+\.md)(?:#([A-Za-z0-9_-]+)|, \"([^\"]+)\")?")


def code_citations(root: Path = ROOT) -> list[tuple[str, str, str | None]]:
    """``(file, doc, anchor or None)`` for each ``docs/X.md``, ``docs/X.md#anchor`` or
    ``docs/X.md, "Heading"`` that the package, the benchmarks and the scripts cite."""
    out = []
    for folder in ("sycam_dsl", "benchmarks"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in {".py", ".sh"} and path.is_file():
                for m in _CODE_CITATION.finditer(path.read_text(encoding="utf-8")):
                    anchor = m.group(2) or (slug(m.group(3)) if m.group(3) else None)
                    out.append((str(path.relative_to(root)), m.group(1), anchor))
    return out


def broken_citations(root: Path = ROOT) -> list[str]:
    broken = []
    for where, doc, anchor in code_citations(root):
        target = root / "docs" / doc
        if not target.is_file():
            broken.append(f"{where}: docs/{doc} does not exist")
        elif anchor is not None and anchor not in anchors(target.read_text(encoding="utf-8")):
            broken.append(f"{where}: docs/{doc} has no heading #{anchor}")
    return broken


def test_the_code_cites_sections_of_docs_that_exist() -> None:
    assert len(code_citations()) >= 20  # the docstrings cite docs/, so a broken pattern shows
    assert broken_citations() == []


def test_a_broken_citation_in_the_code_is_found(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Part one\n")
    (tmp_path / "sycam_dsl").mkdir()
    (tmp_path / "sycam_dsl" / "m.py").write_text(
        '"""See docs/a.md#part-one, docs/a.md, "Part one", docs/a.md#part-two, docs/b.md."""\n')
    assert broken_citations(tmp_path) == ["sycam_dsl/m.py: docs/a.md has no heading #part-two",
                                          "sycam_dsl/m.py: docs/b.md does not exist"]
