"""An AutoPEFT-style search's spec (``peftlab search SEARCH.yaml``): its types, loading with
file:line errors, a trial's run config, and what a trial samples from the space (Optuna's
categorical choices). Running the search is ``peftlab.lab.search.run``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from peftlab.config import FieldError, from_dict, read_yaml
from peftlab.errors import ConfigError
from peftlab.lab.bench.spec import Budget
from peftlab.lab.launch.spec import Launcher, RaySpec, SlurmSpec, check_launch
from peftlab.lab.layers import Layers, base_config, line_of, location
from peftlab.tasks import TaskConfig


@dataclass(frozen=True)
class SpaceEntry:
    name: str  # a registered method
    fixed: dict[str, Any] = field(default_factory=dict)  # its config fields for every trial
    choose: dict[str, list[Any]] = field(default_factory=dict)  # field -> candidate values, one per trial
    optional: bool = True  # a trial may leave the method out
    per_layer: Optional[str] = None  # a field of `choose` picked per block (0 = none there), grouped by `layers`

    def __post_init__(self):
        from peftlab.methods import get_method

        try:
            cls = get_method(self.name)
        except KeyError as e:
            raise FieldError("name", e.args[0]) from None
        known = {f.name for f in dataclasses.fields(cls)}
        for section in ("fixed", "choose"):
            for key in getattr(self, section):
                if key not in known:
                    from peftlab.config import suggest

                    raise FieldError(section, f"{self.name} has no field {key!r}{suggest(key, known)}")
        for key, values in self.choose.items():
            if not isinstance(values, list) or not values:
                raise FieldError("choose", f"{key}: give a non-empty list of values, got {values!r}")
        if self.per_layer is not None:
            if self.per_layer not in self.choose:
                raise FieldError("per_layer", f"{self.per_layer!r} must be one of the fields in choose "
                                              f"({', '.join(self.choose) or 'none'})")
            if "layers" not in known:
                raise FieldError("per_layer", f"{self.name} has no 'layers' field to place a size per block")


@dataclass(frozen=True)
class SearchSpec:
    space: list[SpaceEntry]  # what a trial chooses
    budget: Budget  # of each trial's training: equal steps or equal seconds
    trials: int = 20  # finished trials wanted (a resumed search counts those already done)
    # a run config every trial starts from: a path (relative to the spec file) or a mapping
    base: Union[str, dict[str, Any], None] = None
    overrides: dict[str, Any] = field(default_factory=dict)  # run-config fields for every trial (dotted keys)
    task: Optional[TaskConfig] = None  # data.task of every trial (default: the base's); one task
    seed: int = 0  # every trial's train.seed, and the sampler's
    sampler: Literal["tpe", "nsga2"] = "tpe"  # tpe: maximise the score; nsga2: score up, parameters down
    max_params: Optional[int] = None  # trainable-parameter budget: a trial above it is pruned untrained
    score_split: str = "valid"  # the split a trial is scored on (never choose on the test split)
    population: int = 8  # NSGA-II's population size
    # trials trained at once, each a run's process: with tpe, the trials in flight are counted as if
    # they had scored the worst so far (Optuna's constant liar) so that the sampler spreads them out
    parallel: int = 1
    launcher: Launcher = "local"  # where each trial's process runs: here, a Ray task, a SLURM job (lab.launch)
    ray: RaySpec = field(default_factory=RaySpec)  # launcher: ray: the cluster, each trial's CPUs and GPUs
    slurm: SlurmSpec = field(default_factory=SlurmSpec)  # launcher: slurm: partition, time, GPUs, arrays

    def __post_init__(self):
        check_launch(self)
        if self.parallel < 1:
            raise FieldError("parallel", f"must be >= 1, got {self.parallel}")
        if not self.space:
            raise FieldError("space", "name at least one method to search over")
        if self.trials < 1:
            raise FieldError("trials", f"must be >= 1, got {self.trials}")
        if self.max_params is not None and self.max_params < 1:
            raise FieldError("max_params", f"must be >= 1 or null, got {self.max_params}")
        if self.population < 2:
            raise FieldError("population", f"must be >= 2, got {self.population}")
        if self.seed < 0:
            raise FieldError("seed", f"must be >= 0, got {self.seed}")


@dataclass
class Search:
    path: Path
    spec: SearchSpec
    layers: Layers  # the run config of every trial, without its methods
    source: str
    lines: dict
    task: str = ""  # the task's name in metrics.json
    metric: str = ""  # its primary metric
    blocks: int = 0  # blocks per stack (the fewest, when stacks differ) for per_layer choices


def load_search(path: Path, overrides: tuple[str, ...] = ()) -> Search:
    """The spec at ``path``, checked, with a trial's run config built once without methods and once
    with each method entry at its first choices (errors name the file and line)."""
    from peftlab.config import parse_override, set_path

    path = Path(path)
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a search spec is a mapping (space, budget, trials, ...)")
    for text in overrides:
        key, value = parse_override(text)
        data = set_path(data, key, value, text)
        lines = {p: ln for p, ln in lines.items() if p[: len(key)] != key}
        lines[key] = f"override {text!r}"
    source = str(path)
    spec = from_dict(SearchSpec, data, source=source, lines=lines)
    base_data, base_lines, base_source = base_config(spec, data, lines, path)
    layers = Layers()
    layers.put((), base_data, base_source, base_lines, () if base_source != source else ("base",))
    layers.put_overrides(data.get("overrides") or {}, source, lines, ("overrides",))
    if spec.task is not None:
        layers.put(("data", "task"), data["task"], source, lines, ("task",))
    layers.put(("data", "test_split"), spec.score_split, source, lines, ("score_split",))
    layers.put(("train", "max_steps"), spec.budget.steps, source, lines, ("budget",))
    layers.put(("train", "max_seconds"), spec.budget.seconds, source, lines, ("budget",))
    layers.put(("train", "seed"), spec.seed, source, lines, ("seed",))
    search = Search(path, spec, layers, source, lines)
    cfg = trial_config(search, [])
    if len(cfg.data.tasks) != 1:
        raise ConfigError(f"{location(source, line_of(lines, ('task',)))}: task: a search scores one task, got "
                          f"{len(cfg.data.tasks)}")
    task = cfg.data.tasks[0]
    search.task, search.metric = task.describe(), task.primary_metric
    for i, entry in enumerate(spec.space):  # every value must make a valid method config
        for key, values in entry.choose.items():
            for value in values:
                if key == entry.per_layer and value == 0:
                    continue
                _method_config(search, i, {key: value}, ("space", i, "choose", key))
    return search


def _method_config(search: Search, i: int, picked: dict, where: tuple):
    from peftlab.methods.base import MethodConfig

    entry = search.spec.space[i]
    firsts = {k: v[0] for k, v in entry.choose.items() if k != entry.per_layer}
    data = {"name": entry.name, **entry.fixed, **firsts, **picked}
    try:
        return from_dict(MethodConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{location(search.source, line_of(search.lines, where))}: space.{i}: {e}") from None


def trial_config(search: Search, methods: list[dict]):
    """A trial's run config: the spec's with ``methods``."""
    from peftlab.schema import RunConfig

    layers = Layers()
    layers.data, layers.where = search.layers.data, dict(search.layers.where)
    layers.put(("methods",), methods, "search trial", {}, ())
    try:
        return from_dict(RunConfig, layers.data, source=search.source, lines=layers.where)
    except ConfigError as e:
        raise ConfigError(f"{e} (methods {json.dumps(methods)})") from None


# --------------------------------------------------------------------------------- sampling


def _choice(value: Any):
    """Optuna's categorical choices are scalars: lists and mappings travel as JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def _unchoice(value: Any, options: list):
    return next(o for o in options if _choice(o) == value)


def sample(trial, search: Search) -> list[dict]:
    """The trial's method configs (plain data), in the space's order."""
    out = []
    for i, entry in enumerate(search.spec.space):
        key = f"{i}.{entry.name}"
        if entry.optional and not trial.suggest_categorical(f"{key}.use", [False, True]):
            continue
        picked = {}
        for fname, values in entry.choose.items():
            if fname == entry.per_layer:
                continue
            picked[fname] = _unchoice(trial.suggest_categorical(f"{key}.{fname}", [_choice(v) for v in values]),
                                      values)
        if entry.per_layer is None:
            out.append({"name": entry.name, **entry.fixed, **picked})
            continue
        sizes = [0] + [v for v in entry.choose[entry.per_layer] if v != 0]
        by_size: dict = {}
        for layer in range(search.blocks):
            size = trial.suggest_categorical(f"{key}.{entry.per_layer}.layer{layer}", sizes)
            if size:
                by_size.setdefault(size, []).append(layer)
        for size, layers in sorted(by_size.items()):
            out.append({"name": entry.name, **entry.fixed, **picked, entry.per_layer: size, "layers": layers})
    return out
