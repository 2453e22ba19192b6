"""What a run was made from, pinned when the run is created: absolute paths and data fingerprints.

A run directory outlives the shell that made it: ``peftlab eval RUN`` may run from another working
directory, days later, after the data changed. So ``resolve_paths`` makes every path of the config
absolute before ``config.yaml`` is written, and ``record`` writes ``data.json`` with the SHA-256
of each split file the run read; ``changed`` tells a later reader that a split is not what the run
saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Iterable, Optional

DATA = "data.json"

log = logging.getLogger(__name__)


def _absolute_model(name: Optional[str]) -> Optional[str]:
    """A local model directory as an absolute path; short names and hub ids stay as they are."""
    from peftlab.models.loading import short_names

    if name is None or name in short_names():
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def resolve_paths(cfg):
    """``cfg`` with ``data.path``, ``model.name`` and ``model.tokenizer`` made absolute where they
    are local paths (``stdlib``, short model names and hub ids are left alone)."""
    data, model = cfg.data, cfg.model
    if data.path != "stdlib":
        data = dataclasses.replace(data, path=str(Path(data.path).expanduser().resolve()))
    model = dataclasses.replace(model, name=_absolute_model(model.name), tokenizer=_absolute_model(model.tokenizer))
    return dataclasses.replace(cfg, data=data, model=model)


def split_path(data, split: str) -> Path:
    from peftlab.data.code2doc import default_code2doc_dir, split_file

    return split_file(default_code2doc_dir() if data.path == "stdlib" else Path(data.path), split)


def fingerprint(data, split: str) -> dict:
    """``{"file", "sha256", "bytes"}`` of the file ``split`` reads."""
    path = split_path(data, split)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"file": str(path), "sha256": h.hexdigest(), "bytes": path.stat().st_size}


def record(run_dir: Path, data, splits: Iterable[str]) -> None:
    """Write ``data.json`` (once: a resumed run keeps what the run first read, and warns when a
    split changed since)."""
    from peftlab import rundir

    path = Path(run_dir) / DATA
    if path.is_file():
        for split in dict.fromkeys(splits):
            change = changed(run_dir, data, split)
            if change:
                log.warning("%s", change["message"])
        return
    rundir.write_json(path, {"splits": {s: fingerprint(data, s) for s in dict.fromkeys(splits)}})


def changed(run_dir: Path, data, split: str) -> Optional[dict]:
    """None when ``split`` reads what the run recorded (or the run recorded nothing: older runs);
    else ``{"recorded", "now", "message"}``."""
    import json

    path = Path(run_dir) / DATA
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text()).get("splits", {}).get(split)
    if recorded is None:
        return None
    now = fingerprint(data, split)
    if now["sha256"] == recorded["sha256"] and now["file"] == recorded["file"]:
        return None
    what = "another file" if now["file"] != recorded["file"] else "changed since"
    return {"recorded": recorded, "now": now,
            "message": f"{run_dir}: split {split!r} is not the data this run recorded in {DATA}: {now['file']} "
                       f"is {what} (sha256 {now['sha256'][:12]}, recorded {recorded['sha256'][:12]} of "
                       f"{recorded['file']})"}
