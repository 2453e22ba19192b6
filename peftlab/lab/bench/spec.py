"""A bench spec (``configs/bench/*.yaml``): its typed form (``BenchSpec`` and its sections). The runs
it plans are ``peftlab.lab.bench.plan``'s; the spec's shape is in ``peftlab.lab.bench.run``'s
docstring, and running is there too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from peftlab.config import FieldError
from peftlab.errors import ConfigError
from peftlab.lab.launch.spec import Launcher, RaySpec, SlurmSpec, check_launch
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
