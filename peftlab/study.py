"""The bench: methods × tasks × seeds under one budget, each a normal run directory.

``peftlab bench BENCH.yaml --out DIR`` reads a typed spec (``BenchSpec``), builds every run's
``RunConfig`` before anything trains (an error anywhere names the file, line and field), and
trains ``DIR/<task>/<method>/seed<k>/`` for each combination, seeds outermost, so that a bench
stopped half-way already holds every method on every task once. A run already complete with the
same config is reused, one interrupted is resumed, one that failed or was made with another config
is set aside (renamed, never deleted) and trained again: a killed bench picks up where it stopped.
Each run happens in a fresh process (``isolate: true``, the default): its peak memory is its own,
and a run the kernel kills for memory is recorded as failed while the bench goes on. With
``isolate: false`` runs happen in this process one after another, and nothing keeps a model
between them (each run builds its own and drops it; ``gc`` runs between runs).

A spec::

    base: ../seed000/lora_r32.yaml        # a run config (relative to this file), or a mapping
    overrides: {eval.max_examples: 100}   # run-config fields for every run (dotted keys)
    methods:                              # rows: each a list of method configs + a label
      - {label: LoRA r=32, methods: [{name: lora, r: 32}]}
      - {label: full fine-tune, methods: [full], overrides: {train.lr: 0.0003}}
    tasks: [code2doc, {task: {name: doc_match}, overrides: {data.max_target_length: 4}}]
    seeds: [0, 1, 2]
    budget: {steps: 300}                  # or {seconds: 600}: equal wall-clock training time
    batch_size: {fit: true, max: 64}      # the largest batch that fits (peftlab.batchfit)
    report: {metrics: [rouge_l, bleu]}    # what ``peftlab report`` shows (peftlab.report)
    workers: 2                            # runs side by side, each on cores // 2 threads (or its own GPU)

The bench directory holds ``bench.yaml`` (the spec as given), ``bench.json`` (the index of runs,
their state and the batch size each used) and, at the end, the report (``peftlab.report``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from peftlab import rundir
from peftlab.config import FieldError, from_dict, read_yaml, set_path, to_dict
from peftlab.errors import ConfigError, PeftlabError
from peftlab.methods.base import MethodConfig
from peftlab.tasks import TaskConfig

log = logging.getLogger(__name__)

INDEX = "bench.json"
SPEC_COPY = "bench.yaml"
BATCH_FIT = "batch_fit.json"  # in DIR/<task>/<method>/: the batch size fitted for that pair


@dataclass(frozen=True)
class MethodEntry:
    methods: list[MethodConfig]  # applied in order; [] (or [zero_shot]) = the base model as is
    label: Optional[str] = None  # row name in the report; default from the methods ("LoRA r=8")
    overrides: dict[str, Any] = field(default_factory=dict)  # run-config fields for this row (dotted keys)

    def display_name(self) -> str:
        return self.label or " + ".join(m.describe() for m in self.methods) or "zero-shot"


@dataclass(frozen=True)
class TaskEntry:
    task: Union[TaskConfig, tuple[TaskConfig, ...]]  # a data.task value (several = trained together)
    label: Optional[str] = None  # column name in the report; default the task's own (``code2doc``)
    overrides: dict[str, Any] = field(default_factory=dict)  # run-config fields for this task (dotted keys)

    def display_name(self) -> str:
        if self.label:
            return self.label
        tasks = self.task if isinstance(self.task, tuple) else (self.task,)
        return " + ".join(t.describe() for t in tasks)


@dataclass(frozen=True)
class Budget:
    """Exactly one of the two: every run trains as many optimizer steps, or as many seconds."""

    steps: Optional[int] = None  # equal optimizer steps (train.max_steps)
    seconds: Optional[float] = None  # equal wall-clock training seconds (train.max_seconds; the seed's protocol)

    def __post_init__(self):
        if (self.steps is None) == (self.seconds is None):
            raise ValueError("give exactly one of steps (equal steps) or seconds (equal wall-clock time)")
        if self.steps is not None and self.steps < 1:
            raise FieldError("steps", f"must be >= 1, got {self.steps}")
        if self.seconds is not None and not self.seconds > 0:
            raise FieldError("seconds", f"must be > 0, got {self.seconds}")


@dataclass(frozen=True)
class BatchFit:
    fit: bool = False  # fit each method × task's batch size to free memory (else the base config's)
    max: int = 256  # never above this
    min: int = 1  # never below this (a run that does not fit even then fails as it would anyway)
    memory_fraction: float = 0.8  # CPU: the share of available RAM the estimate may fill
    steps: int = 2  # CUDA: forward + backward + optimizer steps tried per candidate size

    def __post_init__(self):
        for name in ("max", "min", "steps"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.min > self.max:
            raise FieldError("min", f"min ({self.min}) is above max ({self.max})")
        if not 0 < self.memory_fraction <= 1:
            raise FieldError("memory_fraction", f"must be in (0, 1], got {self.memory_fraction}")


REPORT_COLUMNS = ("trainable_params", "trainable_pct", "peak_memory_mib", "train_seconds", "tokens_per_second")


@dataclass(frozen=True)
class ReportSpec:
    title: Optional[str] = None  # the report's heading (default: the spec file's name)
    metrics: Optional[list[str]] = None  # task metrics in the main table; None = each task's primary metric
    # run columns after the task metrics (peftlab.report.RUN_COLUMNS): train cost, size, losses
    columns: list[str] = field(default_factory=lambda: list(REPORT_COLUMNS))

    def __post_init__(self):
        from peftlab.report.table import RUN_COLUMNS

        bad = [c for c in self.columns if c not in RUN_COLUMNS]
        if bad:
            raise FieldError("columns", f"unknown column {bad[0]!r}; known: {', '.join(RUN_COLUMNS)}")


@dataclass(frozen=True)
class BenchSpec:
    methods: list[MethodEntry]  # the rows
    tasks: list[TaskEntry]  # the columns
    budget: Budget  # equal steps or equal seconds
    # a run config every run starts from: a path (relative to the spec file) or a mapping
    base: Union[str, dict[str, Any], None] = None
    overrides: dict[str, Any] = field(default_factory=dict)  # run-config fields for every run (dotted keys)
    seeds: list[int] = field(default_factory=lambda: [0])  # train.seed of each repetition
    batch_size: BatchFit = field(default_factory=BatchFit)
    report: ReportSpec = field(default_factory=ReportSpec)
    # each run in a fresh process: its peak memory is its own (on CPU the RSS a process once had stays
    # with it), and nothing of one run (memory, a crash) reaches the next; false: all in this process
    isolate: bool = True
    # runs side by side, each in its own process with cores // workers CPU threads (or its own GPU,
    # where there are as many): more runs an hour on a CPU whose cores one run cannot all keep busy
    # (data building, scoring and decoding are largely serial); each run is then timed on its share
    workers: int = 1

    def __post_init__(self):
        if self.workers < 1:
            raise FieldError("workers", f"must be at least 1, got {self.workers}")
        if self.workers > 1 and not self.isolate:
            raise FieldError("workers", "runs side by side need isolate: true (each run its own process)")
        if self.workers > 1 and self.batch_size.fit:
            raise FieldError("workers", "batch_size.fit measures free memory, which runs side by side share: "
                                        "fit with workers: 1, or set the batch size")
        if not self.methods:
            raise FieldError("methods", "name at least one method entry")
        if not self.tasks:
            raise FieldError("tasks", "name at least one task")
        if not self.seeds:
            raise FieldError("seeds", "name at least one seed")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise FieldError("seeds", f"seeds must be distinct and >= 0, got {self.seeds}")


@dataclass(frozen=True)
class PlannedRun:
    method: str  # the method entry's label
    task: str  # the task entry's label
    seed: int
    method_index: int
    task_index: int
    config: Any  # RunConfig (batch size as the base says; fitted later when asked)
    rel: str  # run directory relative to the bench directory: <task>/<method>/seed<k>


@dataclass(frozen=True)
class Bench:
    path: Path
    spec: BenchSpec
    runs: list[PlannedRun]

    @property
    def method_labels(self) -> list[str]:
        return [m.display_name() for m in self.spec.methods]

    @property
    def task_labels(self) -> list[str]:
        return [t.display_name() for t in self.spec.tasks]


# ------------------------------------------------------------------------------------- loading


def slug(label: str) -> str:
    """A directory name for a label: ``LoRA r=32 + hyper alignment`` -> ``lora-r32-hyper-alignment``."""
    s = re.sub(r"[^a-z0-9.]+", "-", label.lower().replace("=", "")).strip("-.")
    return s or "x"


def _normalise(data: dict, lines: dict) -> tuple[dict, dict]:
    """Shorthands to the full form, moving line numbers along: a task entry may be just a task
    (``code2doc``, ``{name: doc_match}``), a method entry just one method (``{name: lora}``) or a list."""
    data, lines = dict(data), dict(lines)

    def wrap(section: str, key: str, is_short) -> None:
        items = data.get(section)
        if not isinstance(items, list):
            return
        items = list(items)
        for i, item in enumerate(items):
            if is_short(item):
                items[i] = {key: item}
                moved = {p: ln for p, ln in lines.items() if p[:2] == (section, i) and len(p) > 2}
                for p in moved:
                    del lines[p]
                lines.update({(section, i, key, *p[2:]): ln for p, ln in moved.items()})
                lines[(section, i, key)] = lines.get((section, i))
        data[section] = items

    # a mapping is a shorthand only when it is a task or method config (it has a name); another one
    # stays an entry, whose unknown keys are then named ({label: x, method: ...}: did you mean methods?)
    wrap("tasks", "task", lambda x: isinstance(x, (str, list)) or (isinstance(x, dict) and "task" not in x
                                                                      and "name" in x))
    wrap("methods", "methods", lambda x: isinstance(x, (str, list)) or (isinstance(x, dict) and "methods" not in x
                                                                          and "name" in x))
    if isinstance(data.get("methods"), list):  # {methods: lora} -> {methods: [lora]}
        for i, item in enumerate(data["methods"]):
            if isinstance(item, dict) and isinstance(item.get("methods"), (str, dict)):
                data["methods"][i] = dict(item, methods=[item["methods"]])
                moved = {p: ln for p, ln in lines.items() if p[:3] == ("methods", i, "methods") and len(p) > 3}
                for p in moved:
                    del lines[p]
                lines.update({(*p[:3], 0, *p[3:]): ln for p, ln in moved.items()})
    return data, lines


class _Layers:
    """Plain run-config data assembled from several places, with where each value came from."""

    def __init__(self):
        self.data: dict = {}
        self.where: dict[tuple, str] = {}

    def put(self, path: tuple, value: Any, source: str, lines: dict, root: tuple, text: str = "") -> None:
        """Set run-config ``path`` to ``value``, which sits at ``root`` in the file ``source``
        (whose line numbers are ``lines``)."""
        self.data = set_path(self.data, path, value, text or ".".join(map(str, path))) if path else dict(value)
        self.where = {p: w for p, w in self.where.items() if p[: len(path)] != path}
        for p, ln in lines.items():
            if p[: len(root)] == root and len(p) > len(root):
                self.where[path + p[len(root):]] = _loc(source, ln)
        self.where[path] = _loc(source, _line(lines, root))

    def put_overrides(self, overrides: dict, source: str, lines: dict, root: tuple) -> None:
        for key, value in overrides.items():
            path = tuple(int(p) if p.isdigit() else p for p in str(key).split("."))
            self.put(path, value, source, lines, root + (key,), text=f"{key}: {value!r}")


def _line(lines: dict, path: tuple):
    """The line of ``path`` or of its nearest parent that has one (an int, or the text of a
    command-line override)."""
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path)


def _loc(source: str, line) -> str:
    if isinstance(line, str):  # a command-line override names itself
        return line
    return f"{source}:{line}" if line else source


def load_bench(path: Path, overrides: tuple[str, ...] = ()) -> Bench:
    """The spec at ``path`` and every run it asks for, each run config built and checked.
    ``overrides``: ``key=value`` on the spec itself (``seeds=[0]``, ``budget.steps=10``,
    ``tasks.0.task.test_source=accelerate``: entries in their full form)."""
    from peftlab.config import parse_override

    path = Path(path)
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a bench spec is a mapping (methods, tasks, budget, ...), got {type(data).__name__}")
    data, lines = _normalise(data, lines)
    for text in overrides:  # paths of the full form: tasks.0.task.test_source=accelerate
        key, value = parse_override(text)
        data = set_path(data, key, value, text)
        lines = {p: ln for p, ln in lines.items() if p[: len(key)] != key}
        lines[key] = f"override {text!r}"
    data, lines = _normalise(data, lines)  # an override may give a shorthand (tasks=[code2doc])
    source = str(path)
    spec = from_dict(BenchSpec, data, source=source, lines=lines)
    _check_labels(spec, source, lines)
    base_data, base_lines, base_source = _base(spec, data, lines, path)
    runs = []
    for seed in spec.seeds:
        for ti, task in enumerate(spec.tasks):
            for mi, entry in enumerate(spec.methods):
                layers = _Layers()
                layers.put((), base_data, base_source, base_lines, () if base_source != source else ("base",))
                layers.put_overrides(data.get("overrides") or {}, source, lines, ("overrides",))
                layers.put(("data", "task"), data["tasks"][ti]["task"], source, lines, ("tasks", ti, "task"))
                layers.put_overrides(data["tasks"][ti].get("overrides") or {}, source, lines,
                                     ("tasks", ti, "overrides"))
                layers.put(("methods",), data["methods"][mi]["methods"], source, lines, ("methods", mi, "methods"))
                layers.put(("label",), entry.display_name(), source, lines, ("methods", mi))
                layers.put_overrides(data["methods"][mi].get("overrides") or {}, source, lines,
                                     ("methods", mi, "overrides"))
                steps, seconds = spec.budget.steps, spec.budget.seconds
                layers.put(("train", "max_steps"), steps, source, lines, ("budget",))
                layers.put(("train", "max_seconds"), seconds, source, lines, ("budget",))
                layers.put(("train", "seed"), seed, source, lines, ("seeds",))
                cfg = _run_config(layers, source, entry.display_name(), task.display_name())
                rel = f"{slug(task.display_name())}/{slug(entry.display_name())}/seed{seed}"
                runs.append(PlannedRun(entry.display_name(), task.display_name(), seed, mi, ti, cfg, rel))
    return Bench(path, spec, runs)


def _base(spec: BenchSpec, data: dict, lines: dict, path: Path) -> tuple[dict, dict, str]:
    """The base run config's plain data, its line numbers and the file they refer to."""
    if spec.base is None:
        return {}, {}, str(path)
    if isinstance(spec.base, dict):
        return dict(data["base"]), lines, str(path)
    where = (path.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
    if not where.is_file():
        raise ConfigError(f"{_loc(str(path), _line(lines, ('base',)))}: base: no run config {where} (a path is "
                          f"relative to the spec's directory)")
    base, base_lines = read_yaml(where)
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: a run config is a mapping, got {type(base).__name__}")
    return base, base_lines, str(where)


def _run_config(layers: _Layers, source: str, method: str, task: str):
    from peftlab.schema import RunConfig

    try:
        return from_dict(RunConfig, layers.data, source=source, lines=layers.where)
    except ConfigError as e:
        raise ConfigError(f"{e} (in the run of method {method!r} on task {task!r})") from None


def _check_labels(spec: BenchSpec, source: str, lines: dict) -> None:
    """Rows and columns need distinct labels, and distinct directory names."""
    for section, entries in (("methods", spec.methods), ("tasks", spec.tasks)):
        seen: dict[str, int] = {}
        for i, e in enumerate(entries):
            name = slug(e.display_name())
            if name in seen:
                raise ConfigError(f"{_loc(source, _line(lines, (section, i)))}: {section}.{i}: {e.display_name()!r} "
                                  f"has the same name (directory {name!r}) as {section}.{seen[name]}; give each a "
                                  f"distinct label")
            seen[name] = i


# ------------------------------------------------------------------------------------- running


def run_bench(path: Path, out: Path, *, overrides: tuple[str, ...] = (), progress: bool = True,
              report: bool = True) -> dict:
    """Run every planned run of the spec at ``path`` into ``out`` (see the module docstring);
    returns the index written to ``out/bench.json``. Failed runs are recorded and the bench goes on;
    a ``BenchError`` at the end names them."""
    bench = load_bench(path, overrides)  # every config checked before anything runs
    out = Path(out)
    rundir.make_dir(out, "--out")
    with rundir.owned(out), rundir.stop_on_signals():  # one bench per directory; SIGTERM stops it cleanly
        rundir.write_text(out / SPEC_COPY, Path(path).read_text(encoding="utf-8"))
        index = _index(bench, out)
        if bench.spec.workers > 1:
            _side_by_side(bench, path, overrides, out, index)
        for i, planned in enumerate(bench.runs):
            if index["runs"][i]["state"] != "pending":  # done side by side
                continue
            log.info("[%d/%d] %s", i + 1, len(bench.runs), planned.rel)
            reused = _reusable(bench, planned, out)
            if reused is not None:  # complete with this config: nothing to start a process for
                index["runs"][i].update(reused)
            elif bench.spec.isolate:
                index["runs"][i].update(_one_in_a_process(path, overrides, i, out, progress))
            else:
                index["runs"][i].update(_one(bench, planned, out, progress))
            _logged(bench, i, index, out)
            gc.collect()  # nothing of the run outlives it (bounded memory over a long bench)
            _empty_cuda_cache()
        if report:
            from peftlab.report import write_report

            write_report(out)
    failed = [r for r in index["runs"] if r["state"] != "complete"]
    if failed:
        names = "; ".join(f"{r['dir']}: {r.get('error', '?')}" for r in failed[:5])
        raise BenchError(f"{len(failed)} of {len(index['runs'])} runs did not finish ({names}); rerun the same "
                         f"command to retry them (finished runs are kept)")
    return index


def _logged(bench: Bench, i: int, index: dict, out: Path) -> None:
    run = index["runs"][i]
    log.info("[%d/%d] %s: %s", i + 1, len(bench.runs), bench.runs[i].rel,
             run.get("how") if run["state"] == "complete" else "FAILED")
    index["updated"] = rundir.now()
    rundir.write_json(out / INDEX, index)


def _side_by_side(bench: Bench, path: Path, overrides: tuple[str, ...], out: Path, index: dict) -> None:
    """Every run not already complete, ``workers`` at a time (``peftlab.child.side_by_side``), no
    progress bars (their lines would interleave); the index is written as each ends."""
    from peftlab.child import Job, side_by_side, worker_slots

    jobs = []
    for i, planned in enumerate(bench.runs):
        reused = _reusable(bench, planned, out)
        if reused is not None:
            index["runs"][i].update(reused)
            continue
        args = [str(path), str(out), str(i), json.dumps(list(overrides)), "0"]
        jobs.append(Job(i, "peftlab.study", args, out / f".run-{i}.json"))
    slot = worker_slots(bench.spec.workers)[0]
    index["workers"] = {"runs": bench.spec.workers, "threads_each": int(slot.get("OMP_NUM_THREADS", 0)) or None}
    rundir.write_json(out / INDEX, index)

    def done(job, outcome: dict, slot: dict) -> None:
        index["runs"][job.key].update(outcome)
        _logged(bench, job.key, index, out)

    log.info("%d runs to train, %d side by side", len(jobs), bench.spec.workers)
    side_by_side(jobs, bench.spec.workers, done)


class BenchError(PeftlabError):
    """Some runs of a bench failed (the others are complete and reported)."""


def _index(bench: Bench, out: Path) -> dict:
    from peftlab.env import hardware, versions

    tasks = []
    for entry in bench.spec.tasks:
        cfg = next(r.config for r in bench.runs if r.task == entry.display_name())
        tasks.append({"label": entry.display_name(), "dir": slug(entry.display_name()),
                      "tasks": [_task_info(t) for t in cfg.data.tasks]})
    return {
        "spec": str(bench.path), "title": bench.spec.report.title or bench.path.stem,
        "budget": to_dict(bench.spec.budget), "batch_size": to_dict(bench.spec.batch_size),
        "report": to_dict(bench.spec.report), "seeds": list(bench.spec.seeds),
        "methods": [{"label": m, "dir": slug(m)} for m in bench.method_labels], "tasks": tasks,
        "runs": [{"method": r.method, "task": r.task, "seed": r.seed, "dir": r.rel, "state": "pending"}
                 for r in bench.runs],
        "started": rundir.now(), **hardware(), "versions": versions(),
    }


def _task_info(task: TaskConfig) -> dict:
    """What the report needs to know of a task without rebuilding it: its name in ``task_metrics``,
    its kind, its primary metric (higher is better) and every metric it reports."""
    return {"name": task.describe(), "kind": task.kind, "primary_metric": task.primary_metric,
            "metrics": list(task.metric_names)}


def _one(bench: Bench, planned: PlannedRun, out: Path, progress: bool) -> dict:
    """Run (or reuse) one planned run; its index fields: state, batch size, error."""
    run_dir = out / planned.rel
    try:
        cfg = planned.config
        if bench.spec.batch_size.fit:
            cfg = _with_batch(cfg, _fitted(bench, planned, run_dir.parent))
        how = _train(cfg, run_dir, progress)
        return {"state": "complete", "how": how, "batch_size": cfg.train.batch_size, "error": None}
    except PeftlabError as e:  # a bad run (data, model, numerics) does not stop the others
        log.error("%s: %s", run_dir, e)
        return {"state": "failed", "error": str(e)}
    except (RuntimeError, ValueError, OSError) as e:  # e.g. out of memory: recorded, the bench goes on
        log.error("%s: %s: %s", run_dir, type(e).__name__, e)
        return {"state": "failed", "error": f"{type(e).__name__}: {e}"}


def _one_in_a_process(path: Path, overrides: tuple[str, ...], i: int, out: Path, progress: bool) -> dict:
    """``_one`` for run ``i`` in a child process (``python -m peftlab.study``; ``peftlab.child``)."""
    from peftlab.child import in_a_process

    args = [str(path), str(out), str(i), json.dumps(list(overrides)), "1" if progress else "0"]
    return in_a_process("peftlab.study", args, out / f".run-{i}.json")


def _child(argv: list[str]) -> int:
    """``python -m peftlab.study SPEC OUT I OVERRIDES PROGRESS RESULT``: one run of a bench."""
    from peftlab.child import child_main

    spec, out, i, overrides, progress, result = argv

    def work(show_progress: bool) -> dict:
        bench = load_bench(Path(spec), tuple(json.loads(overrides)))
        return _one(bench, bench.runs[int(i)], Path(out), show_progress)

    return child_main(result, progress, work)


def _reusable(bench: Bench, planned: PlannedRun, out: Path) -> Optional[dict]:
    """The index fields of a run already complete with its config (batch size as fitted), else None."""
    from peftlab.bench import _same_config

    run_dir, cfg = out / planned.rel, planned.config
    if rundir.read_status(run_dir).get("state") != "complete":
        return None
    if bench.spec.batch_size.fit:
        record = run_dir.parent / BATCH_FIT
        if not record.is_file():
            return None
        cfg = _with_batch(cfg, int(json.loads(record.read_text())["batch_size"]))
    if not _same_config(run_dir, cfg):
        return None
    return {"state": "complete", "how": "reused", "batch_size": cfg.train.batch_size, "error": None}


def _with_batch(cfg, batch_size: int):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size))


def _fitted(bench: Bench, planned: PlannedRun, pair_dir: Path) -> int:
    """The batch size fitted for this method × task (once; kept in ``batch_fit.json`` so that a
    resumed bench, and every seed, uses the same one)."""
    from peftlab.batchfit import fit_batch_size

    record = pair_dir / BATCH_FIT
    if record.is_file():
        return int(json.loads(record.read_text())["batch_size"])
    fit = bench.spec.batch_size
    found = fit_batch_size(planned.config, max_batch=fit.max, min_batch=fit.min,
                           memory_fraction=fit.memory_fraction, steps=fit.steps)
    rundir.make_dir(pair_dir, "--out")
    rundir.write_json(record, found)
    log.info("%s × %s: batch size %d (%s)", planned.method, planned.task, found["batch_size"], found["how"])
    return int(found["batch_size"])


def _train(cfg, run_dir: Path, progress: bool) -> str:
    """Reuse, resume or train ``run_dir``; says which."""
    from peftlab.bench import _same_config
    from peftlab.run import resume_run, train_run

    state = rundir.read_status(run_dir).get("state")
    same = state is not None and _same_config(run_dir, cfg)
    if state == "complete" and same:
        return "reused"
    if state in ("interrupted", "running") and same:
        resume_run(run_dir, progress=progress)  # refused if its process still runs
        return "resumed"
    if run_dir.exists():  # failed, or made with another config: keep it aside, never delete it
        with rundir.owned(run_dir):  # refused while a live process writes it
            pass
        why = "stale" if state == "complete" else "incomplete"
        aside = run_dir.with_name(f"{run_dir.name}.{why}-{rundir.now().replace(':', '')}")
        log.warning("%s: %s (%s); set aside as %s", run_dir, state or "no status", "another config" if not same
                    else "failed", aside.name)
        run_dir.rename(aside)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    train_run(cfg, run_dir, progress=progress)
    return "trained"


def _empty_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    import sys

    sys.exit(_child(sys.argv[1:]))
