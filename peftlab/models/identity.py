"""Which weights a base model is: a cheap fingerprint, recorded with every adapter and checked on load.

An adapter is a correction to one set of weights. A base named by a local directory can change under
the same name (retrained, re-downloaded, converted to another dtype); a hub id can move to a new
commit. Loading an adapter onto other weights scores or exports something no one trained, and the
name check alone cannot see it. So the adapter manifest records, beside the base's name:

- for a **local directory**: each weights file's size and a SHA-256 over its safetensors header
  (the tensor names, dtypes, shapes and offsets) and ``BLOCKS`` blocks of ``BLOCK`` bytes sampled at
  fixed offsets across the file (the whole file when it is smaller than that) — about 1 MiB read per
  file, however large, so the check costs milliseconds; and the SHA-256 of ``config.json``;
- for a **hub id**: the commit of the snapshot the hub cache resolves the id (and revision) to.

``init: random`` bases are drawn from the config and the seed: only ``config.json`` is recorded.
A sampled hash can miss an edit between the sampled blocks; it catches every replacement, dtype
change, re-save, retrain and truncation, which is what happens to base directories in practice.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Optional

BLOCKS = 16
BLOCK = 1 << 16
WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def sampled_sha256(path: Path) -> str:
    """SHA-256 over a safetensors file's header and ``BLOCKS`` sampled blocks (the whole file when small)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= BLOCKS * BLOCK:
            h.update(f.read())
            return h.hexdigest()
        if path.suffix == ".safetensors":
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            h.update(head + f.read(min(n, 100 << 20)))
        for i in range(BLOCKS):
            f.seek(i * (size - BLOCK) // (BLOCKS - 1))
            h.update(f.read(BLOCK))
    return h.hexdigest()


def _hub_commit(repo_id: str, revision: Optional[str]) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found).parent.name if isinstance(found, str) else None


def weights_fingerprint(source: str, revision: Optional[str] = None, init: str = "pretrained") -> Optional[dict]:
    """The fingerprint of the base at ``source`` (a resolved local directory or a hub id); None when
    nothing can be said (a hub id not in the cache)."""
    root = Path(source)
    if root.is_dir():
        files = [root / "config.json"] if (root / "config.json").is_file() else []
        if init != "random":
            files += sorted({p for pattern in WEIGHTS for p in root.glob(pattern) if p.is_file()})
        return {"files": {p.name: sampled_sha256(p) for p in files}}
    commit = _hub_commit(source, revision)
    return {"commit": commit} if commit else None


def fingerprint_differences(saved: dict, now: dict) -> list[str]:
    """What differs between two fingerprints, one phrase each (empty: the same weights, or nothing
    to compare: a record without a fingerprint, a hub id not cached now)."""
    if not saved or not now:
        return []
    if "commit" in saved or "commit" in now:
        if saved.get("commit") != now.get("commit"):
            return [f"hub commit {str(saved.get('commit'))[:12]} then, {str(now.get('commit'))[:12]} now"]
        return []
    old, new = saved.get("files", {}), now.get("files", {})
    out = [f"{name} changed" for name in sorted(set(old) & set(new)) if old[name] != new[name]]
    out += [f"{name} is gone" for name in sorted(set(old) - set(new))]
    out += [f"{name} is new" for name in sorted(set(new) - set(old))]
    return out


def describe(fingerprint: Optional[dict]) -> str:
    """A short tag for messages: a digest of the whole fingerprint."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12] if fingerprint else "none"
