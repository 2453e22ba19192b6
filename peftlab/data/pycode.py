"""Python sources, shared by every task built from them: which files (the standard library or any
tree; test directories and installed packages skipped), decoding them (PEP 263), a function's code
without its docstrings and comments, the functions of a snippet, and a docstring's summary.
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import re
import sysconfig
import tokenize
from pathlib import Path
from typing import Iterator, Sequence

from peftlab.errors import DataError

TEST_DIR_NAMES = frozenset({"test", "tests", "idle_test"})
_NEVER_DIR_NAMES = frozenset({"site-packages", "dist-packages", "__pycache__"})


# ----------------------------------------------------------------------------------- cleaning


def char_col(line: str, byte_col: int) -> int:
    """ast columns count UTF-8 bytes; string slicing counts characters."""
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def _docstring_spans(tree: ast.AST, lines: list[str]) -> list[tuple]:
    spans = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            start = (first.lineno, char_col(lines[first.lineno - 1], first.col_offset))
            end = (first.end_lineno, char_col(lines[first.end_lineno - 1], first.end_col_offset))
            spans.append((start, end))
    return spans


def python_tokens(code: str) -> Iterator[tokenize.TokenInfo]:
    """Tokens of ``code`` up to the first tokenizer error (best effort for snippets that don't parse)."""
    try:
        yield from tokenize.generate_tokens(io.StringIO(code).readline)
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        return


def _comment_spans(code: str) -> list[tuple]:
    return [(tok.start, tok.end) for tok in python_tokens(code) if tok.type == tokenize.COMMENT]


def _delete_spans(lines: list[str], spans: list[tuple]) -> str:
    """Cut (row, col) spans out of ``lines``; drop lines a cut left blank, keep the code's own blank lines."""
    lines: list[str | None] = list(lines)
    for (r0, c0), (r1, c1) in sorted(spans, reverse=True):  # bottom-up, so earlier positions stay valid
        lines[r0 - 1] = lines[r0 - 1][:c0] + lines[r1 - 1][c1:]
        lines[r0:r1] = [None] * (r1 - r0)
        if not lines[r0 - 1].strip():
            lines[r0 - 1] = None
    out: list[str] = []
    after_cut = False
    for line in lines:
        if line is None:
            after_cut = True
            continue
        line = line.rstrip()
        # No blank runs, and no blank line left between a `def ...:` and its body by a docstring cut.
        if line or (out and out[-1] and not (after_cut and out[-1].endswith(":"))):
            out.append(line)
            after_cut = after_cut and not line
    return "\n".join(out).strip("\n")


# A leading docstring after a ``def ...:`` line, for snippets ast cannot parse (e.g. Python 2 code).
_FALLBACK_DOCSTRING = re.compile(
    r"(\bdef\s+\w+\s*\([\s\S]*?\)[ \t]*(?:->[^\n]*?)?:[ \t]*(?:#[^\n]*)?\n)"
    r"[ \t]*[rRuUbB]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|\"[^\"\n]*\"|'[^'\n]*')[ \t]*(?:\n|$)"
)


def clean_code(code: str) -> str:
    """``code`` without docstrings (of every def and class in it) and ``#`` comments; never raises."""
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        dedented = dedent(code.split("\n"))
        if dedented != code:  # an indented method snippet parses once dedented
            return clean_code(dedented)
        code = _FALLBACK_DOCSTRING.sub(r"\1", code)
        return _delete_spans(code.split("\n"), _comment_spans(code))
    lines = code.split("\n")
    return _delete_spans(lines, _docstring_spans(tree, lines) + _comment_spans(code))


def dedent(lines: list[str]) -> str:
    """Remove the first line's indentation from every line that has it (unlike textwrap.dedent, a
    string literal's less-indented lines don't stop it)."""
    indent = lines[0][: len(lines[0]) - len(lines[0].lstrip())]
    return "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines)


def functions_in(code: str, where: str = "<code>") -> list[tuple[str, str]]:
    """``(name, source)`` of each function in a snippet: top-level functions and methods of
    classes (``Class.method``); a nested function stays part of the one around it. Raises
    ``DataError`` for text that is not Python or holds no function."""
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    if not code.strip():
        raise DataError(f"{where}: empty; give a file with one Python function")
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError) as e:  # ValueError: NUL bytes on older Pythons
        line = f":{e.lineno}" if getattr(e, "lineno", None) else ""
        raise DataError(f"{where}{line}: not Python ({getattr(e, 'msg', e)}); give a file with one Python "
                        f"function") from None
    lines = code.split("\n")
    found: list[tuple[str, str]] = []

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                found.append((prefix + node.name, dedent(lines[start - 1 : node.end_lineno])))
            elif isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    if not found:
        raise DataError(f"{where}: holds no function (no def); give a file with one Python function")
    return found


# ------------------------------------------------------------------------------ documentation

# Lines that open a reST/Google/numpy/epydoc section or a doctest: the summary stops before them.
_SECTION = re.compile(
    r"^(?::\w|@\w|>>>|\.\. |[-=~]{3,}$|"
    r"(?:Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Examples?|Notes?|Attributes|"
    r"Warnings?|See Also|References|Keyword Arguments|Other Parameters|Todo)\s*:?\s*$)"
)


def summary_from_docstring(docstring: str) -> str:
    """The docstring's first paragraph as one line, stopping early at a section marker."""
    summary = []
    for line in inspect.cleandoc(docstring or "").split("\n"):
        line = line.strip()
        if not line or _SECTION.match(line):
            break
        summary.append(line)
    return " ".join(summary)


# ---------------------------------------------------------------------------------- files


def wanted(relative: Path, exclude_tests: bool) -> bool:
    dirs = set(relative.parts[:-1])
    return not (dirs & _NEVER_DIR_NAMES or (exclude_tests and dirs & TEST_DIR_NAMES))


def stdlib_sources(*, exclude_tests: bool = True) -> list[Path]:
    """The running interpreter's standard-library ``*.py`` files (no site-packages), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if wanted(p.relative_to(root), exclude_tests))


def python_files(sources: Sequence[str | Path], exclude_tests: bool) -> list[tuple[str, Path]]:
    """(path relative to the sources' common directory, absolute path), sorted by relative path."""
    roots = [Path(os.path.abspath(s)) for s in sources]
    for root in roots:
        if not root.exists():
            raise DataError(f"{root}: no such file or directory")
    found = set()
    for root in roots:
        if root.is_dir():
            found.update(p for p in root.rglob("*.py") if wanted(p.relative_to(root), exclude_tests))
        else:
            found.add(root)  # a file named explicitly is never excluded
    base = Path(os.path.commonpath([str(r if r.is_dir() else r.parent) for r in roots]))
    return sorted((p.relative_to(base).as_posix(), p) for p in found)


def decode_source(data: bytes) -> str:
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)  # honours PEP 263 cookies and BOMs
    return data.decode(encoding)
