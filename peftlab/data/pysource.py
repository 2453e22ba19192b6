"""Python functions mined from source trees: the shared layer of the offline task suite.

Every task built from Python sources reads functions the same way (code→doc keeps its own
CodeXGLUE-format builder, ``peftlab.data.code2doc``, whose cleaning this reuses):

* each ``*.py`` file is parsed once and assigned to a split by the SHA-256 of its bytes
  (``peftlab.data.splits``, the very rule pretraining uses to exclude the evaluation files), so no
  file crosses splits and no valid/test file was seen in pretraining;
* each task's *extractor* turns one file's functions into records (``extract(file) -> [dict]``,
  ``record_key(record) -> str``, ``builder_version``: the task classes themselves);
* a record whose key is already in an earlier split is dropped (train, then valid, then test), so
  evaluation never scores an example the model was trained on;
* a valid/test function found verbatim in a file pretraining read but the task does not mine (the
  stdlib's test directories) is dropped too (``VerbatimIndex``).

Every split is written with a ``manifest.json`` (files, counts, removals), atomically.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import platform
import sys
import sysconfig
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

from peftlab.data.pycode import (TEST_DIR_NAMES, clean_code, decode_source, dedent, python_files, stdlib_sources,
                                 summary_from_docstring, wanted)
from peftlab.data.splits import SPLITS, file_digest, require_every_split, split_of_digest, write_atomically
from peftlab.data.textfile import jsonl_lines
from peftlab.errors import DataError

# Bump when what every task's records are built from changes; each task adds its own version.
BUILDER_VERSION = 1
ALL_TEST = {"train": 0, "valid": 0, "test": 100}  # a cross-project source: every file is test data


@dataclass
class Function:
    """One ``def`` of a source file."""

    qualname: str  # dotted: Class.method, outer.inner
    node: ast.AST  # its FunctionDef / AsyncFunctionDef (line numbers are the file's)
    code: str  # from the ``def`` line to its last line (decorators excluded), dedented

    @property
    def name(self) -> str:
        return self.node.name

    @cached_property
    def docstring(self) -> str:
        return ast.get_docstring(self.node, clean=True) or ""

    @cached_property
    def summary(self) -> str:
        """The docstring's first paragraph, one line (code→doc's target)."""
        return summary_from_docstring(self.docstring)

    @cached_property
    def cleaned(self) -> str:
        """The code without docstrings and comments (what tasks show a model)."""
        return clean_code(self.code)


@dataclass
class SourceFile:
    path: str  # relative to the sources' common directory, posix
    digest: str  # SHA-256 of the bytes: picks the split
    split: str
    text: str = ""  # the decoded source
    functions: list[Function] = field(default_factory=list)  # outer before inner, in file order


class Extractor(Protocol):
    name: str
    builder_version: int

    def extract(self, file: SourceFile) -> list[dict]: ...

    def record_key(self, record: dict) -> str: ...


def functions_of(source: str) -> list[Function]:
    """Every (async) function of a module with its dotted name; SyntaxError if it does not parse."""
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    tree = ast.parse(source)
    lines = source.split("\n")
    out: list[Function] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    out.append(Function(name, child, dedent(lines[child.lineno - 1: child.end_lineno])))
                walk(child, name + ".")
            else:
                walk(child, prefix)

    walk(tree, "")
    return out


def _normal_lines(code: str) -> list[str]:
    return [ln.strip() for ln in code.split("\n") if ln.strip()]


class VerbatimIndex:
    """Functions that occur verbatim (line by line, ignoring indentation) in some set of files."""

    def __init__(self, texts: Iterable[str]):
        self.files: list[list[str]] = []
        self.starts: dict[str, list[tuple[int, int]]] = {}
        for text in texts:
            lines = _normal_lines(text.replace("\r\n", "\n").replace("\r", "\n"))
            for i, line in enumerate(lines):
                if line.startswith(("def ", "async def ")):
                    self.starts.setdefault(line, []).append((len(self.files), i))
            self.files.append(lines)

    def __contains__(self, code: str) -> bool:
        want = _normal_lines(code)
        return bool(want) and any(self.files[f][i: i + len(want)] == want for f, i in self.starts.get(want[0], ()))


def pretraining_only_files() -> list[Path]:
    """Stdlib files pretraining reads (train split) that the tasks do not mine: the test directories."""
    root = Path(sysconfig.get_paths()["stdlib"])
    mined = set(stdlib_sources())
    return [p for p in stdlib_sources(exclude_tests=False)
            if p not in mined and TEST_DIR_NAMES & set(p.relative_to(root).parts[:-1])]


def build_source_tasks(sources: Sequence[str | Path], extractors: Sequence[Extractor], *,
                       percent: dict[str, int] | None = None, exclude_tests: bool = True,
                       seen: VerbatimIndex | None = None, exclude_keys: dict[str, set] | None = None,
                       ) -> dict[str, tuple[dict[str, list[dict]], dict]]:
    """``{task name: (records per split, manifest)}`` for ``extractors`` over ``sources``.

    ``seen``: valid/test functions found in it are dropped (pretraining read them elsewhere);
    ``exclude_keys``: per task, record keys that may not appear at all (another build's train split)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    split_of_digest("0" * 8, percent)  # reject bad percentages before any work
    files = python_files(sources, exclude_tests)
    names = [e.name for e in extractors]
    per_task = {n: {s: [] for s in SPLITS} for n in names}
    listed: dict[str, list[dict]] = {s: [] for s in SPLITS}
    skipped, seen_removed = [], 0
    for rel, path in files:
        data = path.read_bytes()
        digest = file_digest(data)
        try:
            text = decode_source(data)
            functions = functions_of(text)
        except (SyntaxError, ValueError, UnicodeDecodeError, LookupError, RecursionError) as e:
            skipped.append({"path": rel, "reason": f"{type(e).__name__}: {e}"})
            continue
        split = split_of_digest(digest, percent)
        if seen is not None and split != "train":
            kept = [f for f in functions if f.code not in seen]
            seen_removed += len(functions) - len(kept)
            functions = kept
        listed[split].append({"path": rel, "sha256": digest})
        source_file = SourceFile(rel, digest, split, text, functions)
        for e in extractors:
            per_task[e.name][split] += [{**r, "path": rel, "sha": digest} for r in e.extract(source_file)]
    out = {}
    for e in extractors:
        kept, duplicates, excluded = _dedupe(per_task[e.name], e.record_key, (exclude_keys or {}).get(e.name, set()))
        out[e.name] = (kept, {
            "task": e.name, "builder_version": BUILDER_VERSION, "task_version": e.builder_version,
            "python_version": platform.python_version(), "sources": [Path(s).as_posix() for s in sources],
            "files": listed, "counts": {s: len(kept[s]) for s in SPLITS}, "skipped_files": skipped,
            "duplicates_removed": duplicates, "excluded_by_key": excluded,
            "seen_in_pretraining_removed": seen_removed,
        })
    return out


def _dedupe(per_split: dict[str, list[dict]], key, exclude: set) -> tuple[dict[str, list[dict]], int, int]:
    seen, kept, duplicates, excluded = set(), {s: [] for s in SPLITS}, 0, 0
    for split in SPLITS:
        for record in per_split[split]:
            k = key(record)
            if k in exclude:
                excluded += 1
            elif k in seen:
                duplicates += 1
            else:
                seen.add(k)
                kept[split].append(record)
    return kept, duplicates, excluded


def payload(records: dict[str, list[dict]], manifest: dict, prefix: str = "") -> dict[str, str]:
    """The files of one task's dataset: ``{prefix}{split}.jsonl`` and ``{prefix}manifest.json``."""
    files = {f"{prefix}{s}.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[s]) for s in SPLITS}
    files[f"{prefix}manifest.json"] = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    return files


def write_tree(out_dir: Path, files: dict[str, str]) -> None:
    """Write ``{relative path: text}`` (subdirectories allowed) under ``out_dir`` in one atomic rename."""
    write_atomically(Path(out_dir), files)


def build_task_dir(sources: Sequence[str | Path], extractor: Extractor, out_dir: str | Path, *,
                   exclude_tests: bool = True, percent: dict[str, int] | None = None) -> dict:
    """One task's ``{train,valid,test}.jsonl`` + ``manifest.json`` in ``out_dir`` (``peftlab data``)."""
    ((records, manifest),) = build_source_tasks(sources, [extractor], percent=percent, exclude_tests=exclude_tests).values()
    if not any(records.values()):
        raise DataError(f"no {extractor.name} examples found in {', '.join(map(str, sources))}")
    require_every_split({s: len(records[s]) for s in SPLITS}, sum(len(v) for v in manifest["files"].values()),
                        sources, percent, f"{extractor.name} examples")
    write_tree(Path(out_dir), payload(records, manifest))
    return manifest


def read_split(path: Path) -> list[dict]:
    """The records of one built split (a JSONL file); DataError naming the file if it is missing."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (build it with `peftlab data`)")
    return [json.loads(line) for _, line in jsonl_lines(path.read_text(encoding="utf-8"))]


# ------------------------------------------------------------------------------ cached builds


def cache_root() -> Path:
    return Path(os.environ.get("PEFTLAB_CACHE") or Path.home() / ".cache" / "peftlab")


def _version_tag(extractors: Sequence[Extractor]) -> str:
    spec = json.dumps([BUILDER_VERSION, sorted((e.name, e.builder_version) for e in extractors)])
    return hashlib.sha256(spec.encode()).hexdigest()[:10]


def stdlib_tasks_dir(extractors: Sequence[Extractor], cache_dir: str | Path | None = None) -> Path:
    """Every source task built from this interpreter's standard library, once, under the cache:
    ``DIR/<task>/{train,valid,test}.jsonl``. Keyed on the Python version and the builders' versions."""
    root = Path(cache_dir) if cache_dir else cache_root()
    out = root / f"pytasks-stdlib-{sys.implementation.name}{platform.python_version()}-{_version_tag(extractors)}"
    if not (out / "manifest.json").is_file():
        seen = VerbatimIndex(p.read_bytes().decode("utf-8", errors="replace") for p in pretraining_only_files())
        built = build_source_tasks(stdlib_sources(), extractors, seen=seen)
        files = {"manifest.json": json.dumps({n: m["counts"] for n, (_, m) in built.items()}, indent=2) + "\n"}
        for name, (records, manifest) in built.items():
            files.update(payload(records, manifest, f"{name}/"))
        write_tree(out, files)
    return out


def package_root(name: str) -> Path:
    """Where an installed package (or a directory: an existing path wins over a package of the same
    name) lives; DataError if neither, or if it is part of the standard library (pretraining read
    that, so it cannot be a cross-project test)."""
    path = Path(name).expanduser()
    if not path.exists():
        try:
            spec = importlib.util.find_spec(name) if name.isidentifier() else None
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise DataError(f"test_source: {name!r} is neither an installed package nor a directory")
        locations = list(spec.submodule_search_locations or [])
        path = Path(locations[0]) if locations else Path(spec.origin or "")
    path = path.resolve()
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    if path == stdlib or stdlib in path.parents and wanted(path.relative_to(stdlib) / "x.py", False):
        raise DataError(f"test_source: {name!r} ({path}) is part of the standard library, which pretraining read; "
                        "name an installed package or a directory outside it")
    return path


def cross_project_dir(name: str, extractors: Sequence[Extractor], exclude_keys: Callable[[], dict[str, set]],
                      parent: Path) -> Path:
    """Every task of ``extractors`` built from package (or directory) ``name``, all of it the test
    split, without any record whose key is in ``exclude_keys()[task]`` (the train/valid splits it
    will be read beside; called only when building); cached under ``parent``, keyed on the package's
    file contents and the builders."""
    root = package_root(name)
    files = python_files([root], exclude_tests=True)
    digest = hashlib.sha256("\n".join(f"{r} {file_digest(p.read_bytes())}" for r, p in files).encode()).hexdigest()
    out = Path(parent) / f"{root.name}-{digest[:10]}-{_version_tag(extractors)}"
    if not (out / "manifest.json").is_file():
        built = build_source_tasks([root], extractors, percent=ALL_TEST, exclude_keys=exclude_keys())
        out_files = {"manifest.json": json.dumps({"source": str(root), **{n: m["counts"] for n, (_, m) in built.items()}},
                                                 indent=2) + "\n"}
        for task, (records, manifest) in built.items():
            out_files.update(payload(records, manifest, f"{task}/"))
        write_tree(out, out_files)
    return out
