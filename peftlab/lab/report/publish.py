"""``peftlab report BENCH_DIR --publish DEST``: a bench's record, small enough to commit.

A bench directory holds adapters and predictions (~0.5 MB a run); what its report reads is much
smaller: the index (``bench.json``, the spec as run), and per run its config, status, metrics,
loss log, per-row statistics, evaluations' scores (``evals/*.json``) and the first few prediction
rows that the report's examples show (``predictions.head.jsonl``). ``publish`` copies exactly those into ``DEST`` (the same layout, so ``peftlab report
DEST`` reads it as it reads the bench), then writes the report there. The results a README quotes
can then be regenerated from the repository alone; retraining any run needs only its
``config.yaml`` (``peftlab train``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# What a report reads from a run (and what says how the run was made); weights and predictions stay behind.
RUN_FILES = ("config.yaml", "status.json", "metrics.json", "train_log.jsonl", "data.json", "trained.json", "row_stats.json")
BENCH_FILES = ("bench.json", "bench.yaml")
TASK_METHOD_FILES = ("batch_fit.json", "tuning.json")  # per task × method, beside the seeds


def publish(bench_dir: Path, dest: Path) -> dict[str, Path]:
    """Copy the record of every run the index lists into ``dest`` and write the report there."""
    from peftlab.lab import rundir
    from peftlab.errors import RunDirError
    from peftlab.lab.evals import EVALS
    from peftlab.lab.excerpt import HEAD, head_rows
    from peftlab.lab.report import write_report

    bench_dir, dest = Path(bench_dir), Path(dest)
    if not (bench_dir / "bench.json").is_file():
        raise RunDirError(f"{bench_dir}: not a bench directory (no bench.json)")
    if dest.resolve() == bench_dir.resolve():
        raise RunDirError(f"{dest}: --publish needs another directory than the bench's own")
    index = json.loads((bench_dir / "bench.json").read_text())
    _check_own(dest, bench_dir, index)
    rundir.make_dir(dest, "--publish directory")
    rundir.write_json(dest / MARK, _mark(bench_dir, index))
    for name in BENCH_FILES:
        _copy(bench_dir / name, dest / name)
    for run in index["runs"]:
        src, out = bench_dir / run["dir"], dest / run["dir"]
        for name in RUN_FILES:
            _copy(src / name, out / name)
        head = head_rows(src)  # the excerpt's rows: a reader sees outputs beside the scores
        if head:
            rundir.write_text(out / HEAD, head)
        for path in sorted((src / EVALS).glob("*.json")):  # evaluations' scores; their predictions stay
            _copy(path, out / EVALS / path.name)
        for name in TASK_METHOD_FILES:
            _copy(src.parent / name, out.parent / name)
    return write_report(dest)


MARK = "published.json"  # in DEST: which bench this record was published from


def _mark(bench_dir: Path, index: dict) -> dict:
    return {"from": str(Path(bench_dir).resolve()), "spec": index.get("spec"), "started": index.get("started")}


def _check_own(dest: Path, bench_dir: Path, index: dict) -> None:
    """DEST must be new or empty, or an earlier publication of this very bench (its ``published.json``
    names it): publishing over another bench's record would leave that bench's adapters with this
    bench's scores."""
    from peftlab.errors import RunDirError

    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        return
    if not dest.is_dir():
        raise RunDirError(f"{dest}: is a file; --publish needs a directory")
    try:
        mark = json.loads((dest / MARK).read_text())
    except (OSError, ValueError):
        raise RunDirError(f"{dest}: is not empty and was not published from {bench_dir} (no {MARK}); "
                          f"--publish writes only into a new directory or its own earlier publication") from None
    mine = _mark(bench_dir, index)
    if (mark.get("spec"), mark.get("started")) != (mine["spec"], mine["started"]):
        raise RunDirError(f"{dest}: holds the record of another bench ({mark.get('spec')}, started "
                          f"{mark.get('started')}, from {mark.get('from')}); publishing {bench_dir} there would "
                          f"replace its scores; choose another directory")


def _copy(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
