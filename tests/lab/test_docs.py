"""The README and docs/ say what is true of the repository.

* The README's ```python blocks run as written, each in a temporary directory: a tiny T5 from config
  (apply LoRA, train a few steps, save and reload the adapter, merge), then models without a family
  table (Phi-3: LoRA in peft's words, peftlab's loop, export to peft; BERT: a Houlsby adapter).
* Every relative link of README.md and docs/*.md points at a file that exists (and at a heading that
  exists, for a Markdown file's #anchor), every path they mention under ``benchmarks/``, ``configs/``,
  ``docs/``, ``models/``, ``peftlab/`` or ``tests/`` exists (globs and ``{a,b}`` expanded), and every
  dotted ``peftlab.x.y`` names a module (or a name defined in one).
* Every README table of measured figures names its source results files in backticks within the
  three non-blank lines above it, and every number of the table appears in one of them (read as
  text; a directory is read through its report.md, results.md and JSON files).
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^```(\w*)\s*$")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w./-])((?:benchmarks|configs|docs|models|peftlab|tests)/(?:[\w.*-]|/|\{[\w.,-]+\})*)")
MODULE = re.compile(r"(?<![\w.])peftlab(?:\.[A-Za-z_]\w*)+")
NUMBER = re.compile(r"(?<![\w.,/-])\d+(?:,\d{3})*(?:\.\d+)?")


def _blocks(text: str):
    """``(kind, lines)`` in order: ``("text", ...)`` outside fences, ``("code:<lang>", ...)`` inside."""
    out, kind, lines = [], "text", []
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and kind == "text":
            out.append((kind, lines))
            kind, lines = f"code:{m.group(1)}", []
        elif line.startswith("```") and kind != "text":
            out.append((kind, lines))
            kind, lines = "text", []
        else:
            lines.append(line)
    out.append((kind, lines))
    return out


def _checked_text(page: Path) -> str:
    """The page without its untyped fenced blocks (program output, error samples: not claims about
    the repository's files)."""
    return "\n".join(line for kind, lines in _blocks(page.read_text(encoding="utf-8"))
                     if kind != "code:" for line in lines)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for kind, lines in _blocks(page.read_text(encoding="utf-8")):
        if kind != "text":
            continue
        for line in lines:
            m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            base = _slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            anchors.add(base if n == 0 else f"{base}-{n}")
    return anchors


def _expand(path: str) -> list[str]:
    """``a/{b,c}.txt`` -> ``a/b.txt``, ``a/c.txt``."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [q for part in m.group(1).split(",") for q in _expand(path[:m.start()] + part + path[m.end():])]


def _exists(path: str) -> bool:
    path = path.rstrip(".,")
    for one in _expand(path):
        if any(c in one for c in "*?["):
            if not glob.glob(str(ROOT / one)):
                return False
        elif not (ROOT / one).exists():
            return False
    return True


def readme_examples() -> list[str]:
    return ["\n".join(lines) for kind, lines in _blocks(README.read_text(encoding="utf-8")) if kind == "code:python"]


# what each block writes where it runs
WRITES = [("tiny-adapter", "tiny-merged"), ("phi3-peft",)]


def test_the_readme_has_its_python_examples():
    assert len(readme_examples()) == len(WRITES)


@pytest.mark.parametrize("i", range(len(WRITES)))
def test_the_readme_python_examples_run_as_written(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes its adapter and merged model where it runs
    exec(compile(readme_examples()[i], str(README), "exec"), {"__name__": "__readme__"})
    assert all((tmp_path / name).is_dir() for name in WRITES[i])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    bad = []
    for _, target in LINK.findall(_checked_text(page)):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, f"{page.relative_to(ROOT)}:\n" + "\n".join(bad)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_mentioned_exists(page):
    missing = sorted({p for p in PATH.findall(_checked_text(page)) if not _exists(p)})
    assert not missing, f"{page.relative_to(ROOT)} mentions paths that do not exist: {missing}"


def _defines(module_file: Path, name: str) -> bool:
    text = module_file.read_text(encoding="utf-8")
    return re.search(rf"^\s*(?:def|class)\s+{name}\b|^{name}\s*[:=]|\bimport\b.*\b{name}\b", text, re.M) is not None


def _module_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:n])
        file = base.with_suffix(".py") if not base.is_dir() else base / "__init__.py"
        if file.is_file():
            rest = parts[n:]
            return not rest or _defines(file, rest[0])
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_peftlab_module_named_exists(page):
    missing = sorted({m for m in MODULE.findall(_checked_text(page)) if not _module_exists(m)})
    assert not missing, f"{page.relative_to(ROOT)} names modules that do not exist: {missing}"


# ------------------------------------------------------------------------- the README's tables


def _tables(lines: list[str]):
    """``(index of the header line, body rows)`` of every Markdown table outside fenced blocks."""
    in_code, i, out = False, 0, []
    while i < len(lines):
        if lines[i].startswith("```"):
            in_code = not in_code
        elif (not in_code and lines[i].startswith("|") and i + 1 < len(lines)
              and re.match(r"^\|\s*:?-+", lines[i + 1])):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append((i, lines[i + 2:j]))
            i = j
            continue
        i += 1
    return out


def _figures(row: str) -> list[str]:
    """The numbers a table row shows: link texts and code spans are names, not figures; a number glued
    to letters (11.5M, 2nd) is skipped."""
    text = re.sub(r"`[^`]*`", " ", LINK.sub(" ", row))
    out = []
    for m in NUMBER.finditer(text):
        after = text[m.end():m.end() + 1]
        if after.isalpha() and after not in "x×":
            continue
        out.append(m.group(0))
    return out


def _sources_above(lines: list[str], start: int) -> list[Path]:
    above, i = [], start - 1
    while i >= 0 and len(above) < 3 and not lines[i].startswith("|"):
        if lines[i].strip():
            above.append(lines[i])
        i -= 1
    named = re.findall(r"`([^`]+)`", "\n".join(above))
    return [ROOT / p for p in named if "/" in p and (ROOT / p).exists()]


def _source_text(path: Path) -> str:
    if path.is_file():
        return path.read_text(encoding="utf-8")
    files = [path / "report.md", path / "results.md", *sorted(path.glob("*.json"))]
    return "\n".join(f.read_text(encoding="utf-8") for f in files if f.is_file())


def _appears(figure: str, text: str) -> bool:
    for form in {figure, figure.replace(",", "")}:
        if re.search(rf"(?<![\d.,]){re.escape(form)}(?![\d]|[.,]\d)", text):
            return True
    return False


def test_readme_tables_of_figures_name_their_sources_and_hold_their_figures():
    lines = README.read_text(encoding="utf-8").splitlines()
    tables = [(start, body) for start, body in _tables(lines) if any(_figures(r) for r in body)]
    assert tables, "the README shows no table of figures: the quickstart table is expected"
    for start, body in tables:
        sources = _sources_above(lines, start)
        assert sources, (f"README.md:{start + 1}: a table of figures with no source results file named in "
                         f"backticks in the 3 lines above it")
        text = "\n".join(_source_text(s) for s in sources)
        missing = sorted({f for row in body for f in _figures(row) if not _appears(f, text)})
        assert not missing, (f"README.md:{start + 1}: figures not found in "
                             f"{[str(s.relative_to(ROOT)) for s in sources]}: {missing}")


def test_the_table_checks_catch_what_they_forbid():
    """A figure not in its source and a table without a source are both caught."""
    assert _figures("| LoRA r=32 | 459,520 (3.83%) | [seed 000](x.md) | `configs/a.yaml` | 11.5M | 1.31× |") \
        == ["32", "459,520", "3.83", "1.31"]
    assert _appears("459,520", '"trainable_params": 459520,') and not _appears("8.1", "8.14")
    assert not _appears("60.9", "60.929") and _appears("60.9", "| 60.9 |")
    lines = ["intro", "", "| a | b |", "|---|---:|", "| x | 1.5 |"]
    assert _sources_above(lines, 2) == []
    assert _slug("Seed 003's Table 3") == "seed-003s-table-3"
    assert _slug("Data: code → documentation") == "data-code--documentation"
    assert _expand("a/{b,c}.txt") == ["a/b.txt", "a/c.txt"]
