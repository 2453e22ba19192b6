"""Code→documentation data: CodeXGLUE ``code_to_text`` JSONL, and the same format built from source.

The task (CodeXGLUE code-to-text, Lu et al. 2021): given a function with its docstring and comments
removed, generate the first paragraph of its docstring; scores compare against ``docstring_tokens``.

- ``read_codexglue_jsonl`` reads the JSONL files exactly as CodeXGLUE distributes them.
- ``build_code2doc`` writes that same format from any Python tree; ``default_code2doc_dir`` builds it
  once from the running interpreter's standard library, so the bench needs no download.
- Finding and cleaning the Python sources is ``peftlab.data.pycode``, shared with the other tasks.

A built corpus is split by *file* content hash (``peftlab.data.splits``), so a file's functions never
straddle splits; a function duplicated across splits is kept only in the earliest (train, then
valid, then test), so evaluation never scores a function the model was trained on.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import re
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from peftlab.data.pycode import (clean_code, decode_source, dedent, python_files, python_tokens, stdlib_sources,
                                 summary_from_docstring)
from peftlab.data.splits import SPLITS, file_digest, require_every_split, split_of_digest, write_atomically
from peftlab.data.textfile import json_record, jsonl_lines, read_user_text
from peftlab.errors import DataError

# Bump when the records a build writes would change: the default corpus cache is keyed on it.
BUILDER_VERSION = 1
_SPLIT_ALIASES = {"validation": "valid", "dev": "valid"}


@dataclass(frozen=True)
class Code2DocExample:
    func_name: str
    code: str  # model input: the function source without docstrings or comments
    target: str  # reference documentation (the docstring summary)
    path: str = ""  # source file, relative, when known
    line: int = 0  # the record's ``line`` field if it has one, else its line in the JSONL


# ------------------------------------------------------------------------------ documentation


def docstring_tokens(text: str) -> list[str]:
    """CodeXGLUE-like tokens: runs of word characters, and each other non-space character alone."""
    return re.findall(r"\w+|[^\w\s]", text)


def _code_tokens(code: str) -> list[str]:
    kinds = (tokenize.NAME, tokenize.OP, tokenize.STRING, tokenize.NUMBER)
    return [tok.string for tok in python_tokens(code) if tok.type in kinds]


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
        with path.open(encoding="utf-8-sig", newline="\n") as f:  # JSON Lines breaks at "\n" only
            for lineno, line in enumerate(f, 1):
                if max_examples is not None and len(examples) >= max_examples:
                    break
                if line.strip():
                    examples.append(_example(json_record(line, f"{path}:{lineno}"), target_field, f"{path}:{lineno}", lineno))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno + 1}: not UTF-8 ({e.reason})") from None
    if not examples:
        raise DataError(f"{path}: no examples (empty split)")
    return examples


def _sampled(path: Path, target_field: str, n: int) -> list[Code2DocExample]:
    import random

    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    lines = jsonl_lines(read_user_text(path))
    if not lines:
        raise DataError(f"{path}: no examples (empty split)")
    if len(lines) > n:
        lines = random.Random(0).sample(lines, n)
    return [_example(json_record(ln, f"{path}:{i}"), target_field, f"{path}:{i}", i) for i, ln in lines]


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
        code = dedent(lines[node.lineno - 1 : node.end_lineno])  # node.lineno is the def, not a decorator
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
    for rel, file in python_files(sources, exclude_tests):
        data = file.read_bytes()
        digest = file_digest(data)
        try:
            records = extract_functions(decode_source(data), rel, digest=digest, percent=percent)
        except (SyntaxError, ValueError, UnicodeDecodeError, LookupError, RecursionError) as e:
            skipped.append({"path": rel, "reason": f"{type(e).__name__}: {e}"})
            continue
        split = split_of_digest(digest, percent)
        manifest_files[split].append({"path": rel, "sha256": digest})
        per_split[split].extend(records)
    kept, duplicates = _dedupe(per_split)
    if not any(kept.values()):
        raise DataError(f"no documented functions found in {', '.join(map(str, sources))}")
    require_every_split({s: len(kept[s]) for s in SPLITS}, sum(len(v) for v in manifest_files.values()), sources,
                        percent)
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
    write_atomically(out_dir, payload)


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


def default_code2doc_dir(cache_dir: str | Path | None = None) -> Path:
    """The standard-library corpus, built on first use under the cache and reused after."""
    root = Path(cache_dir or os.environ.get("PEFTLAB_CACHE") or Path.home() / ".cache" / "peftlab")
    out = root / f"code2doc-stdlib-{sys.implementation.name}{platform.python_version()}-v{BUILDER_VERSION}"
    if not (out / "manifest.json").is_file():
        build_code2doc(stdlib_sources(), out)
    return out
