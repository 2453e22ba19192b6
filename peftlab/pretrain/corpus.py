"""The pretraining corpus: this interpreter's standard library sources, minus evaluation files.

peftlab's own small models are pretrained on ``*.py`` files of the running Python's stdlib (test
directories included: more text). The code→doc benchmark draws its valid/test functions from the
same files, so every file that ``split_of_digest`` puts in ``valid`` or ``test`` is excluded here
by the same content-hash rule: no evaluated function is seen in pretraining. Identical files are
kept once, and the order is sorted by relative path, so the corpus (and its fingerprint) is the
same on every run on the same interpreter.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from peftlab.data.splits import file_digest, split_of_digest
from peftlab.errors import DataError

# Third-party packages live inside the stdlib tree; they are not "the standard library".
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class Corpus:
    """Source files in training order, with the SHA-256 of each file's bytes."""

    files: list[Path]  # paths under the roots, sorted by path relative to their root
    digests: list[str]  # file_digest of each file's bytes, parallel to ``files``

    def texts(self) -> Iterator[str]:
        """Each file's text, exactly: UTF-8 decoded, no newline translation (CRLF kept)."""
        for path in self.files:
            yield path.read_bytes().decode("utf-8")

    def fingerprint(self) -> str:
        """SHA-256 over the sorted digests: names the file set, whatever the paths or order."""
        return hashlib.sha256("\n".join(sorted(self.digests)).encode()).hexdigest()

    def summary(self) -> dict:
        """Counts for a run's metadata: ``{"files": n, "bytes": n, "fingerprint": hex}``."""
        n_bytes = sum(path.stat().st_size for path in self.files)
        return {"files": len(self.files), "bytes": n_bytes, "fingerprint": self.fingerprint()}


def default_roots() -> list[Path]:
    """The running interpreter's standard library directory."""
    return [Path(sysconfig.get_paths()["stdlib"])]


def build_corpus(
    roots: Sequence[Path] | None = None,
    *,
    exclude_eval_splits: bool = True,
    percent: dict[str, int] | None = None,
) -> Corpus:
    """Collect ``*.py`` files under ``roots`` (default: the stdlib), deduplicated by content.

    Files that are empty or not valid UTF-8 are left out. With ``exclude_eval_splits``, so is
    every file whose digest ``split_of_digest(digest, percent)`` assigns to valid or test.
    """
    roots = [Path(r) for r in (default_roots() if roots is None else roots)]
    if not roots:
        raise DataError("build_corpus got an empty list of roots")
    candidates = []  # (relative posix path, root index, absolute path)
    for index, root in enumerate(roots):
        if not root.is_dir():
            raise DataError(f"corpus root {root} is not a readable directory "
                            f"(roots: {_names(roots)})")
        for path in root.rglob("*.py"):
            rel = path.relative_to(root)
            if not _SKIP_DIRS.intersection(rel.parts) and path.is_file():
                candidates.append((rel.as_posix(), index, path))
    candidates.sort()

    files, digests, seen = [], [], set()
    for _, _, path in candidates:
        data = _read_text_bytes(path)
        if data is None:
            continue
        digest = file_digest(data)
        if digest in seen:
            continue
        if exclude_eval_splits and split_of_digest(digest, percent) != "train":
            continue
        seen.add(digest)
        files.append(path)
        digests.append(digest)
    if not files:
        raise DataError("no usable *.py files (non-empty, UTF-8, train split) under "
                        f"{_names(roots)}")
    return Corpus(files=files, digests=digests)


def _read_text_bytes(path: Path) -> bytes | None:
    """The file's bytes if it is readable, non-empty UTF-8 text; otherwise None."""
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return data or None


def _names(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots)
