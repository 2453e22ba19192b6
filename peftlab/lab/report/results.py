"""A bench's results as read from its directory: the index (``bench.json``), and per run its
``metrics.json``, ``train_log.jsonl``, evaluations and per-row statistics (``row_stats.json``).
A run made with a configuration its method declares unfit for comparison
(``MethodConfig.comparison_defect``) is read as ``invalid``: its scores are in no cell."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from peftlab.errors import RunDirError
from peftlab.evaluate.rows import RowStats
from peftlab.lab.evals import EVALS, read_evals


@dataclass
class Run:
    method: str
    task: str  # the task entry's label
    seed: int
    dir: Path
    state: str  # complete, failed, pending, ...
    metrics: Optional[dict] = None  # metrics.json when complete
    log: list = field(default_factory=list)  # train_log.jsonl rows
    batch_size: Optional[int] = None
    evals: dict = field(default_factory=dict)  # name -> RUN/evals/<name>.json (peftlab.lab.evals)
    rows: dict = field(default_factory=dict)  # None / eval name -> that scoring's row_stats.json
    invalid: Optional[str] = None  # why the run must not be compared (its method's comparison_defect)

    def row_record(self, subtask: str, metric: str, eval_name: Optional[str] = None,
                   floor: Optional[str] = None) -> Optional[tuple[list, RowStats]]:
        """``(row ids, RowStats)`` of one score of this run (of ``floor`` on the same rows if given)."""
        task = ((self.rows.get(eval_name) or {}).get("tasks") or {}).get(subtask)
        if not task:
            return None
        where = (task.get("floors") or {}).get(floor) if floor else task.get("metrics")
        data = (where or {}).get(metric)
        return (task["rows"], RowStats.from_json(data)) if data else None

    def scored(self, eval_name: Optional[str] = None) -> Optional[dict]:
        """What holds the task scores and floors: metrics.json, or one of the run's evaluations."""
        if self.metrics is None:
            return None
        return self.metrics if eval_name is None else self.evals.get(eval_name)

    def value(self, key: str, subtask: Optional[str] = None, eval_name: Optional[str] = None):
        """A task metric of ``subtask`` (from ``task_metrics``; of evaluation ``eval_name`` if given),
        or a run-level field."""
        if self.metrics is None:
            return None
        if subtask is not None:
            return ((self.scored(eval_name) or {}).get("task_metrics") or {}).get(subtask, {}).get(key)
        if key == "peak_memory_mib":
            peak = self.metrics.get("peak_memory_bytes")
            return peak / 2**20 if peak else None
        if key == "batch_size":
            return self.batch_size
        return self.metrics.get(key)


@dataclass
class Results:
    title: str
    root: Path
    methods: list[str]
    tasks: list[dict]  # {"label", "dir", "tasks": [{"name", "kind", "primary_metric", "metrics"}]}
    seeds: list[int]
    runs: list[Run]
    index: dict

    def runs_of(self, method: str, task: Optional[str] = None) -> list[Run]:
        return [r for r in self.runs if r.method == method and (task is None or r.task == task)
                and r.metrics is not None and r.invalid is None]

    def invalid(self, method: str) -> list[Run]:
        return [r for r in self.runs if r.method == method and r.invalid is not None]

    def floors(self, task: str, subtask: str, eval_name: Optional[str] = None) -> dict:
        """``{floor name: {metric: value}}`` of one (sub)task (on evaluation ``eval_name``'s rows if
        given), from the first run that recorded them."""
        for r in self.runs:
            where = r.scored(eval_name) if r.task == task else None
            if where and subtask in (where.get("floors") or {}):
                return {k: v for k, v in where["floors"][subtask].items() if isinstance(v, dict)}
        return {}

    @property
    def eval_names(self) -> list[str]:
        """The bench's evaluations that some run has made (``evals`` in the spec)."""
        return [n for n in (self.index.get("evals") or {}) if any(n in r.evals for r in self.runs if r.metrics)]


def collect(bench_dir: Path) -> Results:
    """Everything a report shows, read from a bench directory."""
    bench_dir = Path(bench_dir)
    try:
        index = json.loads((bench_dir / "bench.json").read_text())
    except FileNotFoundError:
        raise RunDirError(f"{bench_dir}: not a bench directory (no bench.json; `peftlab bench SPEC --out "
                          f"{bench_dir}` makes one)") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{bench_dir / 'bench.json'}:{e.lineno}: damaged ({e.msg})") from None
    runs = []
    for entry in index["runs"]:
        if entry.get("stage") == "tune":  # tuning runs scored the validation split: the tuning section's
            continue
        d = bench_dir / entry["dir"]
        metrics = _read_json(d / "metrics.json") if _complete(d) else None
        if metrics is None and _complete(d):
            entry = {**entry, "state": "damaged (metrics.json is not a JSON object)"}
        evals = read_evals(d) if metrics else {}
        rows = {None: _read_json(d / "row_stats.json") or {}}
        rows.update({n: _read_json(d / EVALS / f"{n}.row_stats.json") or {} for n in evals})
        invalid = _defect(d) if metrics else None
        runs.append(Run(entry["method"], entry["task"], entry["seed"], d,
                        ("invalid" if invalid else "complete") if metrics else entry["state"],
                        metrics, _read_log(d / "train_log.jsonl"), entry.get("batch_size") or _batch(d), evals,
                        rows, invalid))
    return Results(index.get("title", bench_dir.name), bench_dir, [m["label"] for m in index["methods"]],
                   index["tasks"], index["seeds"], runs, index)


def _complete(d: Path) -> bool:
    status = _read_json(d / "status.json") or {}
    return status.get("state") == "complete" and (d / "metrics.json").is_file()


def _read_json(path: Path) -> Optional[dict]:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object (a damaged
    record is a missing result, named as such, never a traceback)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_log(path: Path) -> list:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a row torn by a kill
                pass
    return rows


def _batch(d: Path) -> Optional[int]:
    import yaml

    try:
        return yaml.safe_load((d / "config.yaml").read_text())["train"]["batch_size"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


# ------------------------------------------------------------------------------------ numbers


def _defect(d: Path) -> Optional[str]:
    """Why the run's methods make it unfit for comparison, from its saved config (None: fit)."""
    from peftlab.errors import ConfigError
    from peftlab.lab.run import load_run_config

    try:
        methods = load_run_config(d).methods
    except ConfigError:
        return None
    reasons = [f"{m.name}: {m.comparison_defect()}" for m in methods if m.comparison_defect()]
    return "; ".join(reasons) or None
