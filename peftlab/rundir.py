"""Run directories: what a run writes, written so that a partial run never looks finished.

``status.json`` says ``running`` from the first moment, ``failed`` (with the error) if the run
raised, and ``complete`` only after ``metrics.json`` -- the last file -- is in place. Every JSON
file is written to a temporary name and renamed, so readers never see half a file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from peftlab.errors import RunDirError

CONFIG = "config.yaml"
STATUS = "status.json"
METRICS = "metrics.json"
TRAIN_LOG = "train_log.jsonl"
PREDICTIONS = "predictions.jsonl"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def create(run_dir: Path) -> Path:
    """Make a fresh run directory; refuse to reuse one that holds anything (never clobber results)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        state = read_status(run_dir).get("state", "unknown") if (run_dir / STATUS).exists() else "not a run"
        raise RunDirError(f"{run_dir}: already exists ({state}); choose another --out or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    set_status(run_dir, "running", started=now())
    return run_dir


def create_plain(out: Path) -> Path:
    """An output directory that must be new or empty (exports never overwrite anything)."""
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out}: already exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STATUS).read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:
        return {"state": "corrupt"}


def set_status(run_dir: Path, state: str, **extra) -> None:
    data = read_status(run_dir) if (run_dir / STATUS).exists() else {}
    data.update(extra, state=state, updated=now())
    write_json(run_dir / STATUS, data)


def require_complete(run_dir: Path) -> None:
    """Raise unless ``run_dir`` is a finished run (status complete and metrics present)."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    state = read_status(run_dir).get("state")
    if state != "complete" or not (run_dir / METRICS).is_file():
        raise RunDirError(f"{run_dir}: not a finished run (status: {state or 'missing'})")


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / METRICS).read_text())
