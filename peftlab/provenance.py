"""Where a result came from: peftlab's version and commit, and its libraries' versions."""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from pathlib import Path


# The libraries whose version can decide a result: the model's numerics and loading (torch,
# transformers, accelerate, tokenizers, safetensors, numpy), the metrics (sacrebleu, rouge-score,
# rapidfuzz), the floors and the report's statistics (bm25s, scipy), a quantized base
# (bitsandbytes) and the reference of the parity tests and the speed bench (peft). Distribution
# names, read from the installed metadata: nothing is imported (peft would import bitsandbytes).
DECIDING = ("torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy", "sacrebleu",
            "rouge-score", "rapidfuzz", "bm25s", "scipy", "bitsandbytes", "peft")


def versions() -> dict:
    """peftlab's version and commit, Python's, and each library of ``DECIDING`` that is installed
    (one that is not is left out), as every results file records them."""
    import peftlab

    found = {name: installed_version(name) for name in DECIDING}
    return {"peftlab": peftlab.__version__, "peftlab_commit": peftlab_commit(), "python": platform.python_version(),
            **{name: v for name, v in found.items() if v is not None}}


@functools.lru_cache(maxsize=None)
def peftlab_commit() -> str | None:
    """The commit of the peftlab checkout imported (``-dirty`` with uncommitted changes to tracked
    files), or None for an installed copy: only a checkout whose root holds ``.git`` is asked, so a
    virtual environment inside some other repository never reports that repository's commit. Asked
    once a process (the code it imported does not change under it)."""
    import subprocess

    import peftlab

    root = Path(peftlab.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def installed_version(dist: str):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


