"""Code→documentation data: CodeXGLUE ``code_to_text`` JSONL, and the same format built from source.

The task (CodeXGLUE code-to-text, Lu et al. 2021): given a function with its docstring and comments
removed, generate the first paragraph of its docstring; scores compare against ``docstring_tokens``.

- ``read_codexglue_jsonl`` reads the JSONL files exactly as CodeXGLUE distributes them.
- ``build_code2doc`` writes that same format from any Python tree; ``default_code2doc_dir`` builds it
  once from the running interpreter's standard library, so the bench needs no download.

A built corpus is split by *file* content hash (``peftlab.data.splits``), so a file's functions never
straddle splits; a function duplicated across splits is kept only in the earliest (train, then
valid, then test), so evaluation never scores a function the model was trained on.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import os
import platform
import re
import shutil
import sys
import sysconfig
import tempfile
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from peftlab.data.splits import SPLITS, file_digest, split_of_digest
from peftlab.errors import DataError

# Bump when the records a build writes would change: the default corpus cache is keyed on it.
BUILDER_VERSION = 1
TEST_DIR_NAMES = frozenset({"test", "tests", "idle_test"})
_NEVER_DIR_NAMES = frozenset({"site-packages", "dist-packages", "__pycache__"})
_SPLIT_ALIASES = {"validation": "valid", "dev": "valid"}


@dataclass(frozen=True)
class Code2DocExample:
    func_name: str
    code: str  # model input: the function source without docstrings or comments
    target: str  # reference documentation (the docstring summary)
    path: str = ""  # source file, relative, when known
    line: int = 0  # the record's ``line`` field if it has one, else its line in the JSONL


# ----------------------------------------------------------------------------------- cleaning


def _char_col(line: str, byte_col: int) -> int:
    """ast columns count UTF-8 bytes; string slicing counts characters."""
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def _docstring_spans(tree: ast.AST, lines: list[str]) -> list[tuple]:
    spans = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            start = (first.lineno, _char_col(lines[first.lineno - 1], first.col_offset))
            end = (first.end_lineno, _char_col(lines[first.end_lineno - 1], first.end_col_offset))
            spans.append((start, end))
    return spans


def _tokens(code: str) -> Iterator[tokenize.TokenInfo]:
    """Tokens of ``code`` up to the first tokenizer error (best effort for snippets that don't parse)."""
    try:
        yield from tokenize.generate_tokens(io.StringIO(code).readline)
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        return


def _comment_spans(code: str) -> list[tuple]:
    return [(tok.start, tok.end) for tok in _tokens(code) if tok.type == tokenize.COMMENT]


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
        dedented = _dedent(code.split("\n"))
        if dedented != code:  # an indented method snippet parses once dedented
            return clean_code(dedented)
        code = _FALLBACK_DOCSTRING.sub(r"\1", code)
        return _delete_spans(code.split("\n"), _comment_spans(code))
    lines = code.split("\n")
    return _delete_spans(lines, _docstring_spans(tree, lines) + _comment_spans(code))


def _dedent(lines: list[str]) -> str:
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
                found.append((prefix + node.name, _dedent(lines[start - 1 : node.end_lineno])))
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


def docstring_tokens(text: str) -> list[str]:
    """CodeXGLUE-like tokens: runs of word characters, and each other non-space character alone."""
    return re.findall(r"\w+|[^\w\s]", text)


def _code_tokens(code: str) -> list[str]:
    kinds = (tokenize.NAME, tokenize.OP, tokenize.STRING, tokenize.NUMBER)
    return [tok.string for tok in _tokens(code) if tok.type in kinds]


# ------------------------------------------------------------------------------ CodeXGLUE JSONL


def read_codexglue_jsonl(
    path: str | Path, *, target_field: str = "docstring_tokens", max_examples: int | None = None,
    sample: int | None = None,
) -> list[Code2DocExample]:
    """Examples from a CodeXGLUE code_to_text JSONL file; errors name ``file:line``.

    ``sample``: at most this many, drawn with a fixed seed (``random.Random(0).sample``) and cleaned
    only once drawn — the same rows as sampling the whole list, at a fraction of the cost."""
    if sample is not None:
        return _sampled(Path(path), target_field, sample)
    if target_field not in ("docstring_tokens", "docstring"):
        raise ValueError(f"target_field must be 'docstring_tokens' or 'docstring', got {target_field!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    examples: list[Code2DocExample] = []
    lineno = 0
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if max_examples is not None and len(examples) >= max_examples:
                    break
                if line.strip():
                    examples.append(_example(_json(line, f"{path}:{lineno}"), target_field, f"{path}:{lineno}", lineno))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno + 1}: not UTF-8 ({e.reason})") from None
    if not examples:
        raise DataError(f"{path}: no examples (empty split)")
    return examples


def _sampled(path: Path, target_field: str, n: int) -> list[Code2DocExample]:
    import random

    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        lines = [(i, ln) for i, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if ln.strip()]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason})") from None
    if not lines:
        raise DataError(f"{path}: no examples (empty split)")
    if len(lines) > n:
        lines = random.Random(0).sample(lines, n)
    return [_example(_json(ln, f"{path}:{i}"), target_field, f"{path}:{i}", i) for i, ln in lines]


def _json(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _example(record: dict, target_field: str, where: str, lineno: int) -> Code2DocExample:
    for field in ("func_name", "code", target_field):
        if field not in record:
            present = ", ".join(sorted(record)) or "none"
            raise DataError(f"{where}: missing field '{field}' (fields present: {present})")
    for field, kind in (("func_name", str), ("code", str), ("docstring", str), ("path", str), ("line", int)):
        if field in record and not isinstance(record[field], kind):
            raise DataError(f"{where}: field '{field}' must be {kind.__name__}, got {type(record[field]).__name__}")
    if target_field == "docstring":
        target = summary_from_docstring(record["docstring"])
    else:
        tokens = record["docstring_tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError(f"{where}: field 'docstring_tokens' must be a list of strings")
        target = " ".join(tokens)
    return Code2DocExample(
        func_name=record["func_name"],
        code=clean_code(record["code"]),
        target=target,
        path=record.get("path", ""),
        line=record.get("line", lineno),
    )


def split_file(path_or_dir: str | Path, split: str) -> Path:
    """The file a split reads: ``DIR/{split}.jsonl`` for a directory (``validation``/``dev`` mean
    ``valid``), else the file itself."""
    path = Path(path_or_dir)
    if path.is_dir():
        name = _SPLIT_ALIASES.get(split, split)
        if name not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        path = path / f"{name}.jsonl"
    return path


def load_code2doc_split(path_or_dir: str | Path, split: str, **read_kwargs) -> list[Code2DocExample]:
    """One split: ``DIR/{split}.jsonl`` for a directory (``validation``/``dev`` mean ``valid``), else the file."""
    return read_codexglue_jsonl(split_file(path_or_dir, split), **read_kwargs)


# ------------------------------------------------------------------------ building from source


def _defs(node: ast.AST, prefix: str = "") -> Iterator[tuple[ast.AST, str]]:
    """Every (async) function def under ``node`` with its dotted name, outer before inner."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + child.name
            if not isinstance(child, ast.ClassDef):
                yield child, name
            yield from _defs(child, name + ".")
        else:
            yield from _defs(child, prefix)


def extract_functions(
    source: str, path: str = "", *, digest: str | None = None, percent: dict[str, int] | None = None
) -> list[dict]:
    """CodeXGLUE-format records for the documented functions of one source file.

    ``digest`` is the file's SHA-256 (default: of ``source`` UTF-8 encoded); it picks the partition.
    Raises SyntaxError (or ValueError) when the source does not parse.
    """
    digest = digest or file_digest(source.encode("utf-8"))
    split = split_of_digest(digest, percent)
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    tree = ast.parse(source)
    lines = source.split("\n")
    records = []
    for node, qualname in _defs(tree):
        doc = ast.get_docstring(node, clean=True)
        summary = summary_from_docstring(doc or "")
        if len(summary.split()) < 3:
            continue
        code = _dedent(lines[node.lineno - 1 : node.end_lineno])  # node.lineno is the def, not a decorator
        cleaned = clean_code(code)
        if sum(1 for line in cleaned.split("\n") if line.strip()) < 2:
            continue
        records.append({
            "repo": "python-stdlib", "path": path, "func_name": qualname, "original_string": code,
            "language": "python", "code": code, "code_tokens": _code_tokens(cleaned), "docstring": doc,
            "docstring_tokens": docstring_tokens(summary), "sha": digest, "url": "", "partition": split,
            "line": node.lineno,
        })  # fmt: skip
    return records


def _wanted(relative: Path, exclude_tests: bool) -> bool:
    dirs = set(relative.parts[:-1])
    return not (dirs & _NEVER_DIR_NAMES or (exclude_tests and dirs & TEST_DIR_NAMES))


def stdlib_sources(*, exclude_tests: bool = True) -> list[Path]:
    """The running interpreter's standard-library ``*.py`` files (no site-packages), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if _wanted(p.relative_to(root), exclude_tests))


def _python_files(sources: Sequence[str | Path], exclude_tests: bool) -> list[tuple[str, Path]]:
    """(path relative to the sources' common directory, absolute path), sorted by relative path."""
    roots = [Path(os.path.abspath(s)) for s in sources]
    for root in roots:
        if not root.exists():
            raise DataError(f"{root}: no such file or directory")
    found = set()
    for root in roots:
        if root.is_dir():
            found.update(p for p in root.rglob("*.py") if _wanted(p.relative_to(root), exclude_tests))
        else:
            found.add(root)  # a file named explicitly is never excluded
    base = Path(os.path.commonpath([str(r if r.is_dir() else r.parent) for r in roots]))
    return sorted((p.relative_to(base).as_posix(), p) for p in found)


def _decode(data: bytes) -> str:
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)  # honours PEP 263 cookies and BOMs
    return data.decode(encoding)


def build_code2doc(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    *,
    percent: dict[str, int] | None = None,
    exclude_tests: bool = True,
) -> dict:
    """Write ``train/valid/test.jsonl`` and ``manifest.json`` to ``out_dir`` (atomically); return the manifest."""
    kept, manifest = mine_documented(sources, percent=percent, exclude_tests=exclude_tests)
    manifest = {"builder_version": BUILDER_VERSION, **manifest}
    write_splits(Path(out_dir), kept, manifest)
    return manifest


def mine_documented(sources: Sequence[str | Path], *, percent: dict[str, int] | None = None,
                    exclude_tests: bool = True) -> tuple[dict[str, list[dict]], dict]:
    """Every documented function of ``sources`` as a CodeXGLUE record, per split (split by file
    content hash, duplicates kept only in the earliest split), and the manifest's common fields."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    split_of_digest("0" * 8, percent)  # reject bad percentages before any work
    per_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    manifest_files: dict[str, list[dict]] = {s: [] for s in SPLITS}
    skipped = []
    for rel, file in _python_files(sources, exclude_tests):
        data = file.read_bytes()
        digest = file_digest(data)
        try:
            records = extract_functions(_decode(data), rel, digest=digest, percent=percent)
        except (SyntaxError, ValueError, UnicodeDecodeError, LookupError, RecursionError) as e:
            skipped.append({"path": rel, "reason": f"{type(e).__name__}: {e}"})
            continue
        split = split_of_digest(digest, percent)
        manifest_files[split].append({"path": rel, "sha256": digest})
        per_split[split].extend(records)
    kept, duplicates = _dedupe(per_split)
    if not any(kept.values()):
        raise DataError(f"no documented functions found in {', '.join(map(str, sources))}")
    return kept, {
        "python_version": platform.python_version(),
        "sources": [Path(s).as_posix() for s in sources],
        "files": manifest_files,
        "counts": {s: len(kept[s]) for s in SPLITS},
        "skipped_files": skipped,
        "duplicates_removed": duplicates,
    }


def write_splits(out_dir: Path, kept: dict[str, list[dict]], manifest: dict) -> None:
    """``{split}.jsonl`` per split and ``manifest.json``, all or nothing."""
    payload = {f"{s}.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept[s]) for s in SPLITS}
    payload["manifest.json"] = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    _write_atomically(out_dir, payload)


def _dedupe(per_split: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], int]:
    """Keep each (code, summary) once: in the first split of SPLITS order, first in path order."""
    seen, kept, duplicates = set(), {s: [] for s in SPLITS}, 0
    for split in SPLITS:  # train first: a function also in valid/test is dropped from those
        for record in per_split[split]:
            # code_tokens are the cleaned code's tokens: whitespace and comments don't matter.
            key = (" ".join(record["code_tokens"]), " ".join(record["docstring_tokens"]))
            if key in seen:
                duplicates += 1
            else:
                seen.add(key)
                kept[split].append(record)
    return kept, duplicates


def _write_atomically(out_dir: Path, payload: dict[str, str]) -> None:
    """Write into a sibling temp dir, then rename it over ``out_dir``: no reader sees half a dataset."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: is a file, not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        raise DataError(f"{out_dir}: exists and is not a code2doc dataset; refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name, text in payload.items():  # a name may hold a subdirectory ("task/train.jsonl")
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text, encoding="utf-8", newline="\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        if out_dir.exists():
            old = tmp.with_suffix(".old")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def default_code2doc_dir(cache_dir: str | Path | None = None) -> Path:
    """The standard-library corpus, built on first use under the cache and reused after."""
    root = Path(cache_dir or os.environ.get("PEFTLAB_CACHE") or Path.home() / ".cache" / "peftlab")
    out = root / f"code2doc-stdlib-{sys.implementation.name}{platform.python_version()}-v{BUILDER_VERSION}"
    if not (out / "manifest.json").is_file():
        build_code2doc(stdlib_sources(), out)
    return out
