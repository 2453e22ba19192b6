"""A bench spec (``configs/bench/*.yaml``): its typed form (``BenchSpec``) and every run it plans.

``load_bench(path, overrides)`` reads the spec, applies ``--set key=value`` edits, layers each run's
config (the base run config, the spec's ``overrides``, then the task's, then the method's), and
builds every ``RunConfig`` before anything trains: an error anywhere names the spec's file, line and
field, and which run. The spec's shape is in ``peftlab.lab.bench.run``'s docstring; running is there too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from peftlab.config import FieldError, from_dict, read_yaml, set_path
from peftlab.errors import ConfigError
from peftlab.lab.launch.spec import Launcher, RaySpec, SlurmSpec, check_launch
from peftlab.lab.layers import Layers, base_config, line_of, location
from peftlab.methods.base import MethodConfig
from peftlab.tasks import TaskConfig


@dataclass(frozen=True)
class MethodEntry:
    methods: list[MethodConfig]  # applied in order; [] (or [zero_shot]) = the base model as is
    label: Optional[str] = None  # row name in the report; default from the methods ("LoRA r=8")
    overrides: dict[str, Any] = field(default_factory=dict)  # run-config fields for this row (dotted keys)
    # learning rates the bench's tuning stage tries for this row; None = its method's default grid
    lr_grid: Optional[list[float]] = None

    def __post_init__(self):
        if self.lr_grid is not None and (not self.lr_grid or any(not (isinstance(v, (int, float)) and v > 0)
                                                                  for v in self.lr_grid)):
            raise FieldError("lr_grid", f"give positive learning rates, got {self.lr_grid!r}")

    def display_name(self) -> str:
        return self.label or " + ".join(m.describe() for m in self.methods) or "zero-shot"

    def grid(self) -> tuple[float, ...]:
        """The learning rates to tune over: the entry's own, else the first of its methods that names a
        grid (a training-only modifier such as S²-Attn defers to the others); () = nothing to tune."""
        if self.lr_grid is not None:
            return tuple(float(v) for v in self.lr_grid)
        for m in self.methods:
            if type(m).lr_grid is not None:
                return tuple(type(m).lr_grid)
        return ()


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


@dataclass(frozen=True)
class Tuning:
    """Each method's learning rate chosen on the validation split with the same effort for every
    method: ``runs`` runs per method × task (one per value of its grid) at seed ``seed``, scored on the
    validation split; then every seed trains at the chosen rate (``peftlab.lab.bench.run``)."""

    runs: int = 4  # grid values per method: every tuned row's grid must have exactly this many
    steps: Optional[int] = None  # each tuning run's optimizer steps; None = the bench's budget
    seed: int = 0  # train.seed of the tuning runs
    max_examples: Optional[int] = None  # validation rows each tuning run scores; None = eval.max_examples

    def __post_init__(self):
        if self.runs < 1:
            raise FieldError("runs", f"must be >= 1, got {self.runs}")
        if self.steps is not None and self.steps < 1:
            raise FieldError("steps", f"must be >= 1, got {self.steps}")
        if self.max_examples is not None and self.max_examples < 1:
            raise FieldError("max_examples", f"must be >= 1, got {self.max_examples}")


REPORT_COLUMNS = ("trainable_params", "trainable_pct", "peak_memory_mib", "train_seconds", "tokens_per_second")


@dataclass(frozen=True)
class ReportSpec:
    title: Optional[str] = None  # the report's heading (default: the spec file's name)
    metrics: Optional[list[str]] = None  # task metrics in the main table; None = each task's primary metric
    # run columns after the task metrics (peftlab.lab.report.RUN_COLUMNS): train cost, size, losses
    columns: list[str] = field(default_factory=lambda: list(REPORT_COLUMNS))
    # claims named in advance: [method A, method B] pairs whose paired difference A − B the report gives
    # on every score column, with its interval and p-value (Holm-corrected over the pairs and columns)
    contrasts: list[list[str]] = field(default_factory=list)

    def __post_init__(self):
        from peftlab.lab.report.table import RUN_COLUMNS

        for pair in self.contrasts:
            if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(m, str) for m in pair):
                raise FieldError("contrasts", f"each contrast is a pair of method labels [A, B], got {pair!r}")

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
    launcher: Launcher = "local"  # where each run's process runs: here, a Ray task, a SLURM job (lab.launch)
    ray: RaySpec = field(default_factory=RaySpec)  # launcher: ray: the cluster, each run's CPUs and GPUs
    slurm: SlurmSpec = field(default_factory=SlurmSpec)  # launcher: slurm: partition, time, GPUs, arrays
    # more test sets for every run, scored from its saved adapter after training (peftlab.lab.evals):
    # name -> data.* edits of the run's config, e.g. {cross-project: {data.task.test_source: accelerate}}
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    # learning rates tuned on the validation split before the seeds train (None: each row's own rate)
    tuning: Optional[Tuning] = None

    def __post_init__(self):
        from peftlab.lab.evals import check_eval

        for name, edits in self.evals.items():
            try:
                check_eval(name, edits if isinstance(edits, dict) else {}, "evals")
            except ConfigError as e:
                raise FieldError("evals", str(e)) from None
            if not isinstance(edits, dict) or not edits:
                raise FieldError("evals", f"evals.{name}: give the data.* edits as a mapping, e.g. "
                                          "{data.task.test_source: accelerate}")
        if self.workers < 1:
            raise FieldError("workers", f"must be at least 1, got {self.workers}")
        check_launch(self)
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
    config: Any  # RunConfig (batch size as the base says; fitted later when asked; lr tuned later when asked)
    rel: str  # run directory relative to the bench directory: <task>/<method>/seed<k>
    stage: str = "main"  # "tune": a tuning run (scored on the validation split), "main": a run of the results
    lr: Optional[float] = None  # a tuning run's learning rate

    @property
    def pair(self) -> str:
        """The task × method directory this run belongs to (``<task>/<method>``)."""
        return self.rel.split("/seed")[0] if self.stage == "main" else self.rel.split("/tune/")[0]


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
    base_data, base_lines, base_source = base_config(spec, data, lines, path)
    runs = []

    def layered(seed: int, ti: int, mi: int):
        """The run config of one (seed, task, method): base, spec overrides, task, method, budget, seed."""
        task, entry = spec.tasks[ti], spec.methods[mi]
        layers = Layers()
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
        return _run_config(layers, source, entry.display_name(), task.display_name())

    if spec.tuning is not None:
        runs += _tuning_runs(spec, layered, source, lines)
    for seed in spec.seeds:
        for ti, task in enumerate(spec.tasks):
            for mi, entry in enumerate(spec.methods):
                rel = f"{slug(task.display_name())}/{slug(entry.display_name())}/seed{seed}"
                runs.append(PlannedRun(entry.display_name(), task.display_name(), seed, mi, ti,
                                       layered(seed, ti, mi), rel))
    _check_evals(spec, runs, source, lines)
    return Bench(path, spec, runs)


def _tuning_runs(spec: BenchSpec, layered, source: str, lines: dict) -> list[PlannedRun]:
    """One run per learning rate of each trained row's grid, on each task, scored on the validation
    split (no decoding grid, floors or evaluations: the choice is the learning rate's alone)."""
    import dataclasses

    tuning, runs = spec.tuning, []
    for mi, entry in enumerate(spec.methods):
        grid = entry.grid()
        if grid and len(grid) != tuning.runs:
            raise ConfigError(f"{location(source, line_of(lines, ('methods', mi)))}: methods.{mi}: "
                              f"{entry.display_name()!r} has {len(grid)} learning rates to tune ({list(grid)}); "
                              f"every method gets tuning.runs = {tuning.runs} (equal effort): give lr_grid "
                              f"{tuning.runs} values")
    for ti, task in enumerate(spec.tasks):
        for mi, entry in enumerate(spec.methods):
            base = layered(tuning.seed, ti, mi)
            for lr in entry.grid():
                train = dataclasses.replace(base.train, lr=lr, seed=tuning.seed,
                                            max_steps=tuning.steps if tuning.steps else base.train.max_steps,
                                            max_seconds=None if tuning.steps else base.train.max_seconds)
                evaluation = dataclasses.replace(base.eval, select={}, floors=False,
                                                 max_examples=tuning.max_examples or base.eval.max_examples)
                data = dataclasses.replace(base.data, test_split=base.data.eval_split)
                cfg = dataclasses.replace(base, train=train, eval=evaluation, data=data)
                rel = f"{slug(task.display_name())}/{slug(entry.display_name())}/tune/lr{lr:g}"
                runs.append(PlannedRun(entry.display_name(), task.display_name(), tuning.seed, mi, ti, cfg, rel,
                                       stage="tune", lr=lr))
    return runs


def _check_evals(spec: BenchSpec, runs: list[PlannedRun], source: str, lines: dict) -> None:
    """Every evaluation's edits applied to one run of each task, before anything trains."""
    from peftlab.lab.evals import edited_config

    seen = set()
    for run in runs:
        if run.task_index in seen:
            continue
        seen.add(run.task_index)
        for name, edits in spec.evals.items():
            try:
                edited_config(run.config, name, edits, f"task {run.task!r}")
            except ConfigError as e:
                raise ConfigError(f"{location(source, line_of(lines, ('evals', name)))}: evals.{name}: {e}") from None


def _run_config(layers: Layers, source: str, method: str, task: str):
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
                raise ConfigError(f"{location(source, line_of(lines, (section, i)))}: {section}.{i}: {e.display_name()!r} "
                                  f"has the same name (directory {name!r}) as {section}.{seen[name]}; give each a "
                                  f"distinct label")
            seen[name] = i
    labels = [m.display_name() for m in spec.methods]
    for i, pair in enumerate(spec.report.contrasts):
        unknown = [m for m in pair if m not in labels]
        if unknown:
            from peftlab.config import suggest

            raise ConfigError(f"{location(source, line_of(lines, ('report', 'contrasts', i)))}: report.contrasts.{i}: "
                              f"no method labelled {unknown[0]!r}{suggest(unknown[0], labels)}")
