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

from peftlab.files import sha256_file

DATA = "data.json"

log = logging.getLogger(__name__)


def _absolute_model(name: Optional[str]) -> Optional[str]:
    """A local model directory as an absolute path; short names and hub ids stay as they are."""
    from peftlab.models.loading import short_names

    if name is None or name in short_names():
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def resolve_paths(cfg, base_dir: Optional[Path] = None):
    """``cfg`` with its tasks' data paths, ``model.name`` and ``model.tokenizer`` made absolute
    where they are local paths (``stdlib``, short model names and hub ids are left alone)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    tasks = tuple(t.resolved(base) for t in cfg.data.tasks)
    data = dataclasses.replace(cfg.data, task=tasks if isinstance(cfg.data.task, tuple) else tasks[0])
    model = dataclasses.replace(cfg.model, name=_absolute_model(cfg.model.name),
                                tokenizer=_absolute_model(cfg.model.tokenizer))
    cfg = dataclasses.replace(cfg, data=data, model=model)
    ppl = cfg.eval.perplexity
    if ppl and ppl != "stdlib" and not Path(ppl).is_absolute():
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, perplexity=str((base / ppl).resolve())))
    return cfg


def _digest(path: Path) -> dict:
    return {"file": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def fingerprint(data, split: str) -> list[dict]:
    """``{"task", "file", "sha256", "bytes"}`` of every file ``split`` reads, over the run's tasks."""
    return [{"task": t.describe(), **_digest(Path(p))} for t in data.tasks for p in t.split_files(split)]


def record(run_dir: Path, data, splits: Iterable[str], base: Optional[dict] = None,
           warnings: Iterable[str] = ()) -> None:
    """Write ``data.json`` (once: a resumed run keeps what the run first read, and warns when a
    split changed since). ``warnings``: what ``data_warnings`` said of the data. ``base``: the base
    model's record (``base_model_record``); a run resumed on other base weights than it started on
    is refused (its checkpoints correct the first ones)."""
    import json

    from peftlab.errors import ModelError
    from peftlab.lab import rundir
    from peftlab.models.identity import fingerprint_differences

    path = Path(run_dir) / DATA
    if path.is_file():
        for split in dict.fromkeys(splits):
            change = changed(run_dir, data, split)
            if change:
                log.warning("%s", change["message"])
        then = (json.loads(path.read_text()).get("base") or {}).get("weights") or {}
        diffs = fingerprint_differences(then, (base or {}).get("weights") or {})
        if diffs:
            raise ModelError(f"{run_dir}: base model {base.get('name')} is not the weights this run started on "
                             f"({'; '.join(diffs)}); its checkpoints continue training on those: restore them, "
                             f"or start a new run")
        return
    rundir.write_json(path, {"splits": {s: fingerprint(data, s) for s in dict.fromkeys(splits)},
                             **({"base": base} if base else {}), **({"warnings": list(warnings)} if warnings else {})})


def changed(run_dir: Path, data, split: str) -> Optional[dict]:
    """None when ``split`` reads what the run recorded (or the run recorded nothing: older runs);
    else ``{"recorded", "now", "tag", "message"}`` (``tag``: a short digest of what is read now)."""
    import json

    path = Path(run_dir) / DATA
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text()).get("splits", {}).get(split)
    if recorded is None:
        return None
    if isinstance(recorded, dict):  # the first format: one file
        recorded = [recorded]
    now = fingerprint(data, split)
    key = lambda rows: [(r["file"], r["sha256"]) for r in rows]  # noqa: E731
    if key(now) == key(recorded):
        return None
    old = {r["file"]: r for r in recorded}
    diffs = []
    for r in now:
        was = old.get(r["file"])
        what = "not read by this run" if was is None else ("changed since" if was["sha256"] != r["sha256"] else "")
        if what:
            diffs.append(f"{r['file']} is {what} (sha256 {r['sha256'][:12]}"
                         + (f", recorded {was['sha256'][:12]})" if was else ")"))
    gone = [f for f in old if f not in {r["file"] for r in now}]
    diffs += [f"{f} was read by this run and is not now" for f in gone]
    tag = hashlib.sha256("".join(r["sha256"] for r in now).encode()).hexdigest()
    return {"recorded": recorded, "now": now, "tag": tag[:12],
            "message": f"{run_dir}: split {split!r} is not the data this run recorded in {DATA}: " + "; ".join(diffs)}
