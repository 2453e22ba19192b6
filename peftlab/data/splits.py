"""The one rule that assigns a source file to a split, shared by code→doc and pretraining.

A file's split depends only on the SHA-256 of its bytes, so the assignment is deterministic across
machines and directory layouts, identical copies of a file always land together, and the
pretraining corpus can exclude exactly the files whose functions are evaluated.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from peftlab.errors import DataError

SPLITS = ("train", "valid", "test")

# Percent of files in each split; valid and test are small because CPU generation is slow.
DEFAULT_PERCENT = {"train": 90, "valid": 5, "test": 5}


def file_digest(data: bytes) -> str:
    """Hex SHA-256 of a file's bytes: the file's identity everywhere in peftlab."""
    return hashlib.sha256(data).hexdigest()


def require_every_split(counts: dict[str, int], files: int, sources, percent: dict[str, int] | None = None,
                        what: str = "documented functions") -> None:
    """Refuse a build that leaves a split empty whose share is not 0 (a run could not read it): it
    says how many examples and files there were and how to get every split one."""
    percent = percent or DEFAULT_PERCENT
    empty = [s for s in SPLITS if not counts.get(s) and percent[s] > 0]
    if empty:
        shares = ",".join(str(percent[s]) for s in SPLITS)
        raise DataError(f"{', '.join(map(str, sources))}: the {' and '.join(empty)} split"
                        f"{'s are' if len(empty) > 1 else ' is'} empty ({sum(counts.values())} {what} in {files} "
                        f"files; each file goes to one split by its content hash, {shares} percent to "
                        f"train,valid,test): give more source files, or larger shares with --percent")


def parse_percent(text: str) -> dict[str, int]:
    """``"80,10,10"`` -> ``{"train": 80, "valid": 10, "test": 10}`` (checked: three whole numbers, sum 100)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or sum(map(int, parts)) != 100:
        raise DataError(f"--percent {text!r}: give three whole percentages for train,valid,test that sum to 100, "
                        f"e.g. 80,10,10")
    return dict(zip(SPLITS, map(int, parts)))


def split_of_digest(digest: str, percent: dict[str, int] | None = None) -> str:
    """Map a file digest to ``train``/``valid``/``test`` by its first 8 hex digits modulo 100."""
    percent = percent or DEFAULT_PERCENT
    if sum(percent.values()) != 100 or set(percent) != set(SPLITS):
        raise ValueError(f"split percentages must cover {SPLITS} and sum to 100, got {percent}")
    bucket = int(digest[:8], 16) % 100
    edge = 0
    for name in SPLITS:
        edge += percent[name]
        if bucket < edge:
            return name
    raise AssertionError("unreachable")


def split_of_file(path: str | Path, percent: dict[str, int] | None = None) -> str:
    """The split a source file belongs to (by content hash, not by name)."""
    return split_of_digest(file_digest(Path(path).read_bytes()), percent)


def write_atomically(out_dir: Path, payload: dict[str, str]) -> None:
    """Write into a sibling temp dir, then rename it over ``out_dir``: no reader sees half a dataset."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: is a file, not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
        raise DataError(f"{out_dir}: exists and is not a dataset peftlab wrote (no manifest.json); refusing to overwrite it")
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
