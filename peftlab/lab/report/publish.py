"""``peftlab report BENCH_DIR --publish DEST``: a bench's record, small enough to commit.

A bench directory holds adapters and predictions (~0.5 MB a run); what its report reads is much
smaller: the index (``bench.json``, the spec as run), and per run its config, status, metrics,
loss log and evaluations' scores (``evals/*.json``). ``publish`` copies exactly those into ``DEST`` (the same layout, so ``peftlab report
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
    from peftlab.lab.report import write_report

    bench_dir, dest = Path(bench_dir), Path(dest)
    if not (bench_dir / "bench.json").is_file():
        raise RunDirError(f"{bench_dir}: not a bench directory (no bench.json)")
    if dest.resolve() == bench_dir.resolve():
        raise RunDirError(f"{dest}: --publish needs another directory than the bench's own")
    rundir.make_dir(dest, "--publish directory")
    index = json.loads((bench_dir / "bench.json").read_text())
    for name in BENCH_FILES:
        _copy(bench_dir / name, dest / name)
    for run in index["runs"]:
        src, out = bench_dir / run["dir"], dest / run["dir"]
        for name in RUN_FILES:
            _copy(src / name, out / name)
        for path in sorted((src / EVALS).glob("*.json")):  # evaluations' scores; their predictions stay
            _copy(path, out / EVALS / path.name)
        for name in TASK_METHOD_FILES:
            _copy(src.parent / name, out.parent / name)
    return write_report(dest)


def _copy(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
