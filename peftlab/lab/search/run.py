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
vs trainable parameters, and ``DIR/trials.md`` every trial. The spec, its checks and the sampling
are ``peftlab.lab.search.spec``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from peftlab.lab import rundir
from peftlab.errors import ConfigError, PeftlabError
from peftlab.provenance import versions
from peftlab.lab.search.spec import Search, load_search, trial_config
from peftlab.lab.search.trials import ask_trial, finished_trials, search_digest, trial_values

log = logging.getLogger(__name__)
STORAGE = "study.db"
STUDY_NAME = "peftlab-search"


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
    check_space(search)  # a method that cannot apply to the model would fail every trial that draws it
    out = Path(out)
    rundir.make_dir(out, "--out")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with rundir.owned(out), rundir.stop_on_signals():
        _same_search(search, out)
        rundir.write_text(out / "search.yaml", Path(path).read_text(encoding="utf-8"))
        if any(e.per_layer for e in search.spec.space):
            search.blocks = _blocks(trial_config(search, []))
        study = _open_study(search, out)
        _recover(study, out)
        if search.spec.launcher == "local" and search.spec.parallel == 1:
            while finished_trials(study) < search.spec.trials:
                _one_trial(study, search, out, progress)
                write_front(study, search, out)
        else:  # trials as tasks, several in flight (peftlab.lab.search.launched)
            from peftlab.lab.search.launched import run_launched

            run_launched(study, search, out, Path(path), overrides, told=lambda: write_front(study, search, out))
        return write_front(study, search, out)


def check_space(search: Search) -> None:
    """Apply every value the space can draw to the model on the meta device before any trial: each
    method with each of its choices (the other fields at their first), and all methods together;
    one ``ConfigError`` names every pair that does not apply (``bench.preflight.check_applicable``)."""
    from types import SimpleNamespace

    from peftlab.lab.bench.preflight import check_applicable

    def one(entry, **picked) -> dict:
        first = {k: v[0] for k, v in entry.choose.items() if k != entry.per_layer}
        if entry.per_layer is not None:
            first[entry.per_layer] = next((v for v in entry.choose[entry.per_layer] if v != 0), 0)
            first["layers"] = [0]
        return {"name": entry.name, **entry.fixed, **first, **picked}

    def run(methods: list[dict], label: str) -> SimpleNamespace:
        return SimpleNamespace(config=trial_config(search, methods), method=label, task=search.task)

    runs = []
    for entry in search.spec.space:
        runs.append(run([one(entry)], entry.name))
        for field, values in entry.choose.items():
            for value in values[1:]:
                if not (field == entry.per_layer and value == 0):
                    runs.append(run([one(entry, **{field: value})], f"{entry.name} with {field}={value!r}"))
    if len(search.spec.space) > 1:
        runs.append(run([one(e) for e in search.spec.space], "all the space's methods together"))
    check_applicable(runs)


PLAN = "search_plan.json"  # what the trials in this directory were made by (all but the number of trials)


def _same_search(search: Search, out: Path) -> None:
    """Refuse to continue trials made by another search (another task, space, budget or base): a
    rerun into the same directory may only add trials, never mix two searches in one Pareto table."""
    digest, plan = search_digest(search)
    record = out / PLAN
    if record.is_file():
        old = json.loads(record.read_text())
        if old.get("digest") != digest:
            changed = sorted(k for k in set(plan) | set(old.get("plan", {})) if plan.get(k) != old.get("plan", {}).get(k))
            raise ConfigError(f"{out}: holds the trials of another search (it differs in {', '.join(changed)}); "
                              f"choose another --out, or restore the spec those trials were made with")
    elif (out / STORAGE).exists():
        raise ConfigError(f"{out}: holds trials but no {PLAN} saying which search made them; choose another --out")
    rundir.write_json(record, {"digest": digest, "plan": json.loads(json.dumps(plan, default=str))})


def _open_study(search: Search, out: Path):
    import warnings

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
        with warnings.catch_warnings():  # constant_liar is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=spec.seed + done,  # 10 random trials, then TPE
                                                 constant_liar=spec.parallel > 1)
        directions = ["maximize"]
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, directions=directions,
                                load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"{out / STORAGE}: this study was made with other objectives "
                          f"({[d.name.lower() for d in study.directions]}); use another --out for sampler "
                          f"{spec.sampler}")
    return study


def _recover(study, out: Path) -> None:
    """Trials left ``RUNNING`` by a killed search: one whose run finished is told its result; any
    other is marked failed (with no ``error``: not counted as finished) and its choices enqueued, so
    the next trial retries them, resuming its run directory from its checkpoint where it has one (or
    following its job, still running on a cluster: ``peftlab.lab.search.launched``)."""
    from optuna.trial import TrialState

    for t in study.trials:
        if t.state != TrialState.RUNNING:
            continue
        run = out / "trials" / f"{int(t.user_attrs.get('resumes', t.number)):04d}"
        values = trial_values(study, rundir.read_metrics(run), t.user_attrs) if _complete(run) else None
        if values is not None:
            study.tell(t.number, values)
            continue
        study.tell(t.number, state=TrialState.FAIL)
        resumes = int(t.user_attrs.get("resumes", t.number))  # its directory (a job may still be writing it)
        study.enqueue_trial(t.params, user_attrs={"resumes": resumes} if "run_dir" in t.user_attrs else None,
                            skip_if_exists=False)
        log.info("trial %d was stopped mid-run: trying its choices again", t.number)


def _complete(run: Path) -> bool:
    return rundir.read_status(run).get("state") == "complete" and (run / rundir.METRICS).is_file()


def _one_trial(study, search: Search, out: Path, progress: bool) -> None:
    from optuna.trial import TrialState

    from peftlab.lab.bench.run import train_or_resume

    asked = ask_trial(study, search, out)
    if asked is None:
        return
    trial, _, cfg, run = asked
    (out / "trials").mkdir(exist_ok=True)
    try:
        train_or_resume(cfg, run, progress)
        metrics = rundir.read_metrics(run)
    except (PeftlabError, RuntimeError, ValueError) as e:  # recorded (an error of ours), never retried
        trial.set_user_attr("error", f"{type(e).__name__}: {e}" if not isinstance(e, PeftlabError) else str(e))
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, e)
        return
    values = trial_values(study, metrics, trial.user_attrs)
    study.tell(trial, values) if values is not None else study.tell(trial, state=TrialState.FAIL)
    log.info("trial %d: %s %s = %.3f, %s trainable", trial.number, search.task, search.metric,
             values[0] if values else float("nan"), f"{trial.user_attrs['trainable_params']:,}")


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
               "finished": finished_trials(study), "front": on_front, "trials": rows, "versions": versions()}
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
