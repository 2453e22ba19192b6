"""Instruction data: dolly-15k and Alpaca files, and an instruction set built from Python sources.

Formats read (one record per example), both into ``InstructionRecord``:

* databricks-dolly-15k (Conover et al., 2023) JSONL: ``instruction``, ``context``, ``response``,
  ``category``;
* Alpaca (Taori et al., 2023): ``instruction``, ``input``, ``output``, as JSONL or as the single JSON
  list that ``alpaca_data.json`` ships as.

``build_instruct(sources, out)`` writes ``train/valid/test.jsonl`` in dolly's format (and
``manifest.json``) from the documented functions of a Python tree, one instruction per function:

* ``document``  — "Summarize ..." the function (docstring and comments removed) -> its docstring summary
* ``implement`` — "Write the Python function `name` ..." from the summary -> the function's code
* ``name``      — "Suggest a name ..." for the function, its name replaced by ``_`` -> the name

The kind is picked from a hash of (file content hash, qualified name): deterministic, independent
of file order, about a third each (``implement`` falls back to ``document`` for functions longer
than ``MAX_CODE_CHARS``; ``name`` does for dunder and one-letter names). Splits are code→doc's: by
the file's content hash (``peftlab.data.splits``), so no file crosses splits and no valid/test file
is in the pretraining corpus (``peftlab.pretrain.corpus`` excludes them by the same rule); a
function seen in an earlier split (same cleaned code and summary) is dropped from later ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from peftlab.data.code2doc import mine_documented, write_splits
from peftlab.data.pycode import clean_code, stdlib_sources, summary_from_docstring
from peftlab.data.splits import SPLITS
from peftlab.data.textfile import json_record, jsonl_lines, read_user_text
from peftlab.errors import DataError

BUILDER_VERSION = 1  # bump when the records a build writes change: the stdlib cache is keyed on it
KINDS = ("document", "implement", "name")
MAX_CODE_CHARS = 1200  # longer functions are not asked for in full (a target that long is mostly cut)
INSTRUCTIONS = {
    "document": "Summarize what this Python function does in one sentence.",
    "implement": "Write the Python function `{name}` that this docstring describes.",
    "name": "Suggest a name for this Python function.",
}


@dataclass(frozen=True)
class InstructionRecord:
    instruction: str
    input: str  # dolly's "context", Alpaca's "input" ("" when there is none)
    response: str  # dolly's "response", Alpaca's "output"
    category: str = ""
    line: int = 0  # line in a JSONL file, index in a JSON list (1-based)


_FIELDS = {"dolly": ("instruction", "context", "response"), "alpaca": ("instruction", "input", "output")}


def read_instruction_file(path: Path, fmt: str = "auto") -> list[InstructionRecord]:
    """Records of a dolly/Alpaca ``.jsonl`` file or an Alpaca-style ``.json`` list; errors name
    ``file:line`` (or ``file[index]``) and the missing field."""
    text = read_user_text(Path(path))
    rows: list[tuple[str, int, object]] = []
    if Path(path).suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records (Alpaca's format), got {type(data).__name__}")
        rows = [(f"{path}[{i}]", i + 1, r) for i, r in enumerate(data)]
    else:
        rows = [(f"{path}:{n}", n, json_record(line, f"{path}:{n}")) for n, line in jsonl_lines(text)]
    if not rows:
        raise DataError(f"{path}: no examples (empty split)")
    return [_record(rec, where, n, fmt) for where, n, rec in rows]


def _record(rec, where: str, line: int, fmt: str) -> InstructionRecord:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if fmt == "auto":
        fmt = "dolly" if "response" in rec else "alpaca" if "output" in rec else ""
        if not fmt:
            raise DataError(f"{where}: neither dolly's 'response' nor Alpaca's 'output' field "
                            f"(fields present: {', '.join(sorted(rec)) or 'none'})")
    instruction, context, response = _FIELDS[fmt]
    for name in (instruction, response):
        if name not in rec:
            raise DataError(f"{where}: missing field {name!r} of the {fmt} format (fields present: "
                            f"{', '.join(sorted(rec)) or 'none'})")
    for name in (instruction, context, response, "category"):
        if name in rec and not isinstance(rec[name], str):
            raise DataError(f"{where}: field {name!r} must be a string, got {type(rec[name]).__name__}")
    return InstructionRecord(rec[instruction], rec.get(context, ""), rec[response], rec.get("category", ""), line)


# ------------------------------------------------------------------------------------ building


def _kind(digest: str, qualname: str, name: str, code: str) -> str:
    kind = KINDS[int(hashlib.sha256(f"{digest}:{qualname}".encode()).hexdigest()[:8], 16) % len(KINDS)]
    if kind == "implement" and len(code) > MAX_CODE_CHARS:
        return "document"
    if kind == "name" and (len(name) < 2 or name.startswith("__")):
        return "document"
    return kind


def instruction_of(record: dict) -> dict:
    """One dolly-format instruction from a code2doc record of one function."""
    name = record["func_name"].rsplit(".", 1)[-1]
    code = clean_code(record["code"])
    summary = summary_from_docstring(record["docstring"])
    kind = _kind(record["sha"], record["func_name"], name, code)
    if kind == "document":
        context, response = code, summary
    elif kind == "implement":
        context, response = summary, code
    else:
        context, response = re.sub(rf"\b{re.escape(name)}\b", "_", code), name
    return {"instruction": INSTRUCTIONS[kind].format(name=name), "context": context, "response": response,
            "category": kind, "path": record["path"], "func_name": record["func_name"], "line": record["line"]}


def build_instruct(sources: Sequence[str | Path], out_dir: str | Path, *, percent: dict[str, int] | None = None,
                   exclude_tests: bool = True) -> dict:
    """Write ``train/valid/test.jsonl`` (dolly format) and ``manifest.json`` to ``out_dir``, atomically:
    the documented functions code→doc mines (same splits, same de-duplication), one instruction each."""
    functions, manifest = mine_documented(sources, percent=percent, exclude_tests=exclude_tests)
    kept = {s: [instruction_of(r) for r in rows] for s, rows in functions.items()}
    manifest = {"builder_version": BUILDER_VERSION, **manifest,
                "categories": {s: {k: sum(r["category"] == k for r in kept[s]) for k in KINDS} for s in SPLITS}}
    write_splits(Path(out_dir), kept, manifest)
    return manifest


def default_instruct_dir(cache_dir: str | Path | None = None) -> Path:
    """The instruction set of the standard library, built on first use under the cache and reused."""
    root = Path(cache_dir or os.environ.get("PEFTLAB_CACHE") or Path.home() / ".cache" / "peftlab")
    out = root / f"instruct-stdlib-{sys.implementation.name}{platform.python_version()}-v{BUILDER_VERSION}"
    if not (out / "manifest.json").is_file():
        build_instruct(stdlib_sources(), out)
    return out
