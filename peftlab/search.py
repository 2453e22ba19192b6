"""AutoPEFT-style configuration search (Zhou et al., 2023, arXiv:2301.12132): which methods go where.

AutoPEFT searches, per layer, whether a serial adapter, a parallel adapter and a prefix are there
and how large, under a budget of trainable parameters, with multi-objective Bayesian optimisation
over score and parameter count. ``peftlab search SEARCH.yaml --out DIR`` does the same with the
methods peftlab has and Optuna's samplers: TPE (one objective, the score, with trials over
``max_params`` pruned before training) or NSGA-II (two: the score up, the trainable parameters
down). The search space is written with the existing method configs::

    space:
      - name: lora                      # any registered method
        fixed: {alpha: 16}              # fields every trial uses
        choose: {r: [4, 8, 16], targets: [[q, v], [q, k, v, o]]}   # one value per trial
      - name: parallel
        choose: {bottleneck: [8, 16, 32]}
        per_layer: bottleneck           # AutoPEFT: a size per block, 0 = no adapter there
      - {name: prefix, choose: {length: [5, 10, 20]}}

Every entry may be left out by a trial (``optional: true``, the default). ``per_layer`` picks one of
the field's values *or 0* for every block index; the blocks that share a size become one method
config with that size and ``layers: [...]`` (so the method needs a ``layers`` field: the bottleneck
adapters have it). Each trial is a normal run directory ``DIR/trials/<number>``, scored on
``score_split`` (the validation split by default: a search never chooses on the test split). The
study lives in Optuna's SQLite storage ``DIR/study.db`` and is reopened (``load_if_exists``): a
stopped search goes on where it was, a trial killed mid-run is tried again, and ``trials`` counts
the finished ones. After every trial ``DIR/pareto.{md,json,png}`` hold the Pareto front of score
vs trainable parameters, and ``DIR/trials.md`` every trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from peftlab import rundir
from peftlab.config import FieldError, from_dict, read_yaml
from peftlab.errors import ConfigError, PeftlabError
from peftlab.study_spec import Budget, _base, _Layers, _line, _loc
from peftlab.tasks import TaskConfig

log = logging.getLogger(__name__)
STORAGE = "study.db"
STUDY_NAME = "peftlab-search"


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

    def __post_init__(self):
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
    layers: _Layers  # the run config of every trial, without its methods
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
    base_data, base_lines, base_source = _base(spec, data, lines, path)
    layers = _Layers()
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
        raise ConfigError(f"{_loc(source, _line(lines, ('task',)))}: task: a search scores one task, got "
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
        raise ConfigError(f"{_loc(search.source, _line(search.lines, where))}: space.{i}: {e}") from None


def trial_config(search: Search, methods: list[dict]):
    """A trial's run config: the spec's with ``methods``."""
    from peftlab.schema import RunConfig

    layers = _Layers()
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


def trainable_params(cfg) -> int:
    """What a trial would train, counted on a fresh build (then dropped)."""
    import gc

    from peftlab.run import build

    loaded, state = build(cfg)
    n = state.trainable_params(loaded.model)
    del loaded, state
    gc.collect()
    return n


def _blocks(cfg) -> int:
    from peftlab.models.loading import load_model

    loaded = load_model(cfg.model, seed=cfg.train.seed)
    counts: dict[str, int] = {}
    for stack, _, _ in loaded.family.blocks(loaded.model):
        counts[stack] = counts.get(stack, 0) + 1
    return min(counts.values())


# ---------------------------------------------------------------------------------- running


def run_search(path: Path, out: Path, *, overrides: tuple[str, ...] = (), progress: bool = True) -> dict:
    """Run (or continue) the search of ``path`` into ``out``; returns the summary in ``pareto.json``."""
    import optuna

    search = load_search(path, overrides)
    out = Path(out)
    rundir.make_dir(out, "--out")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with rundir.owned(out), rundir.stop_on_signals():
        rundir.write_text(out / "search.yaml", Path(path).read_text(encoding="utf-8"))
        if any(e.per_layer for e in search.spec.space):
            search.blocks = _blocks(trial_config(search, []))
        study = _open_study(search, out)
        _recover(study, out)
        while _finished(study) < search.spec.trials:
            _one_trial(study, search, out, progress)
            write_front(study, search, out)
        return write_front(study, search, out)


def _open_study(search: Search, out: Path):
    import optuna

    spec = search.spec
    storage = f"sqlite:///{(out / STORAGE).resolve()}"
    try:  # the sampler's seed moves on with the trials done, or a resumed search would redraw them
        done = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials)
    except KeyError:
        done = 0
    if spec.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(population_size=spec.population, seed=spec.seed + done)
        directions = ["maximize", "minimize"]
    else:
        sampler = optuna.samplers.TPESampler(seed=spec.seed + done)  # 10 random trials, then TPE
        directions = ["maximize"]
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, directions=directions,
                                load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"{out / STORAGE}: this study was made with other objectives "
                          f"({[d.name.lower() for d in study.directions]}); use another --out for sampler "
                          f"{spec.sampler}")
    return study


def _finished(study) -> int:
    from optuna.trial import TrialState

    # a failed trial with no error of ours was stopped mid-run (see _recover): it is retried, not counted
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and "error" in t.user_attrs) for t in study.trials)


def _recover(study, out: Path) -> None:
    """Trials left ``RUNNING`` by a killed search: one whose run finished is told its result; any
    other is marked failed (with no ``error``: not counted as finished) and its choices enqueued, so
    the next trial retries them."""
    from optuna.trial import TrialState

    for t in study.trials:
        if t.state != TrialState.RUNNING:
            continue
        run = out / "trials" / f"{t.number:04d}"
        values = _values(study, rundir.read_metrics(run), t.user_attrs) if _complete(run) else None
        if values is not None:
            study.tell(t.number, values)
            continue
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, skip_if_exists=False)
        log.info("trial %d was stopped mid-run: trying its choices again", t.number)


def _complete(run: Path) -> bool:
    return rundir.read_status(run).get("state") == "complete" and (run / rundir.METRICS).is_file()


def _values(study, metrics: dict, attrs: dict) -> Optional[list]:
    task = attrs.get("task")
    score = (metrics.get("task_metrics") or {}).get(task, {}).get(attrs.get("metric"))
    if score is None:
        return None
    return [score, metrics["trainable_params"]] if len(study.directions) == 2 else [score]


def _one_trial(study, search: Search, out: Path, progress: bool) -> None:
    from optuna.trial import TrialState

    from peftlab.run import train_run

    trial = study.ask()
    methods = sample(trial, search)
    run = out / "trials" / f"{trial.number:04d}"
    for k, v in {"methods": methods, "run_dir": str(run.relative_to(out)), "task": search.task,
                 "metric": search.metric}.items():
        trial.set_user_attr(k, v)
    try:
        cfg = trial_config(search, methods)
        n = trainable_params(cfg)
    except PeftlabError as e:  # a combination the model has no place for: a failed trial, the search goes on
        trial.set_user_attr("error", str(e))
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d: %s", trial.number, e)
        return
    trial.set_user_attr("trainable_params", n)
    if search.spec.max_params is not None and n > search.spec.max_params:
        trial.set_user_attr("error", f"{n:,} trainable parameters > max_params {search.spec.max_params:,}")
        study.tell(trial, state=TrialState.PRUNED)
        return
    same = _same_as(study, methods)
    if same is not None:  # the sampler drew a configuration already trained: its result stands
        trial.set_user_attr("same_as", same.number)
        study.tell(trial, same.values)
        return
    (out / "trials").mkdir(exist_ok=True)
    try:
        metrics = train_run(cfg, run, progress=progress)
    except (PeftlabError, RuntimeError, ValueError) as e:  # recorded (an error of ours), never retried
        trial.set_user_attr("error", f"{type(e).__name__}: {e}" if not isinstance(e, PeftlabError) else str(e))
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, e)
        return
    values = _values(study, metrics, trial.user_attrs)
    study.tell(trial, values) if values is not None else study.tell(trial, state=TrialState.FAIL)
    log.info("trial %d: %s %s = %.3f, %s trainable", trial.number, search.task, search.metric,
             values[0] if values else float("nan"), f"{n:,}")


def _same_as(study, methods: list[dict]):
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("methods") == methods:
            return t
    return None


# ----------------------------------------------------------------------------------- results


def pareto_front(points: list[tuple[float, int, Any]]) -> list[tuple[float, int, Any]]:
    """The points no other beats on both: a higher (or equal) score with fewer (or equal) trainable
    parameters, one of them strictly. Sorted by parameters. Points are ``(score, params, tag)``."""
    front = [p for p in points if not any((q[0] >= p[0] and q[1] <= p[1]) and (q[0] > p[0] or q[1] < p[1])
                                          for q in points)]
    return sorted(front, key=lambda p: (p[1], -p[0]))


def write_front(study, search: Search, out: Path) -> dict:
    """``pareto.json``/``.md``/``.png`` and ``trials.md`` from the study as it is now."""
    from optuna.trial import TrialState

    rows = []
    for t in study.trials:
        a = t.user_attrs
        rows.append({"number": t.number, "state": t.state.name.lower(), "score": t.values[0] if t.values else None,
                     "trainable_params": a.get("trainable_params"), "methods": a.get("methods"),
                     "run_dir": a.get("run_dir") if t.state == TrialState.COMPLETE and "same_as" not in a else None,
                     "same_as": a.get("same_as"), "error": a.get("error"),
                     "stale": t.state == TrialState.FAIL and "error" not in a})
    done = [r for r in rows if r["state"] == "complete" and r["score"] is not None]
    front = pareto_front([(r["score"], r["trainable_params"], r["number"]) for r in done if r["same_as"] is None])
    on_front = [next(r for r in rows if r["number"] == n) for _, _, n in front]
    summary = {"spec": str(search.path), "task": search.task, "metric": search.metric,
               "split": search.spec.score_split, "sampler": search.spec.sampler, "max_params": search.spec.max_params,
               "finished": _finished(study), "front": on_front, "trials": rows}
    rundir.write_json(out / "pareto.json", summary)
    head = f"| Trial | {search.metric} ({search.spec.score_split}) | Trainable params | Methods |"
    table = [head, "|---:|---:|---:|---|"] + [
        f"| {r['number']} | {r['score']:.2f} | {r['trainable_params']:,} | {_describe(r['methods'])} |"
        for r in on_front]
    intro = (f"# Search: `{search.path}`\n\nPareto front of {search.task} {search.metric} on the "
             f"{search.spec.score_split} split vs trainable parameters ({summary['finished']} trials finished, "
             f"sampler {search.spec.sampler}" + (f", budget {search.spec.max_params:,} parameters" if
                                                  search.spec.max_params else "") + ").\n\n")
    rundir.write_text(out / "pareto.md", intro + "\n".join(table) + "\n\n![front](pareto.png)\n")
    trials = ["| Trial | State | Score | Trainable params | Methods | Note |", "|---:|---|---:|---:|---|---|"]
    for r in rows:
        note = r["error"] or (f"same as trial {r['same_as']}" if r["same_as"] is not None else "") or (
            "stopped mid-run, retried" if r["stale"] else "")
        score = f"{r['score']:.2f}" if r["score"] is not None else "–"
        params = f"{r['trainable_params']:,}" if r["trainable_params"] is not None else "–"
        trials.append(f"| {r['number']} | {r['state']} | {score} | {params} | {_describe(r['methods'])} | {note} |")
    rundir.write_text(out / "trials.md", "\n".join(trials) + "\n")
    _plot_front(done, on_front, search, out / "pareto.png")
    return summary


def _describe(methods: Optional[list[dict]]) -> str:
    if methods is None:
        return "–"
    if not methods:
        return "none (the base model)"
    parts = []
    for m in methods:
        fields = ", ".join(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"
                           for k, v in m.items() if k != "name")
        parts.append(f"{m['name']}({fields})")
    return " + ".join(parts)


def _plot_front(done: list[dict], front: list[dict], search: Search, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [max(r["trainable_params"], 1) for r in done]
    ax.scatter(xs, [r["score"] for r in done], color="gray", alpha=0.6, label="trials")
    if front:
        ax.plot([max(r["trainable_params"], 1) for r in front], [r["score"] for r in front], "o-", color="tab:red",
                label="Pareto front")
        for r in front:
            ax.annotate(str(r["number"]), (max(r["trainable_params"], 1), r["score"]), xytext=(3, 3),
                        textcoords="offset points", fontsize=7)
    if search.spec.max_params:
        ax.axvline(search.spec.max_params, color="black", ls="--", lw=0.8, label="parameter budget")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel(f"{search.task} {search.metric} ({search.spec.score_split})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
