"""The one rule that assigns a source file to a split, shared by code→doc and pretraining.

A file's split depends only on the SHA-256 of its bytes, so the assignment is deterministic across
machines and directory layouts, identical copies of a file always land together, and the
pretraining corpus can exclude exactly the files whose functions are evaluated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SPLITS = ("train", "valid", "test")

# Percent of files in each split; valid and test are small because CPU generation is slow.
DEFAULT_PERCENT = {"train": 90, "valid": 5, "test": 5}


def file_digest(data: bytes) -> str:
    """Hex SHA-256 of a file's bytes: the file's identity everywhere in peftlab."""
    return hashlib.sha256(data).hexdigest()


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
