"""Every run a bench spec plans (``load_bench``).

``load_bench(path, overrides)`` reads the spec (``peftlab.lab.bench.spec``), applies ``--set
key=value`` edits, layers each run's config (the base run config, the spec's ``overrides``, then the
task's, then the method's), and builds every ``RunConfig`` before anything trains: an error anywhere
names the spec's file, line and field, and which run. The tuning stage's runs are planned here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from peftlab.config import from_dict, read_yaml, set_path
from peftlab.errors import ConfigError
from peftlab.lab.bench.spec import BenchSpec
from peftlab.lab.layers import Layers, base_config, line_of, location


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
