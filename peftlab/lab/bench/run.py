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

    base: ../papers/seed000/lora_r32.yaml        # a run config (relative to this file), or a mapping
    overrides: {eval.max_examples: 100}   # run-config fields for every run (dotted keys)
    methods:                              # rows: each a list of method configs + a label
      - {label: LoRA r=32, methods: [{name: lora, r: 32}]}
      - {label: full fine-tune, methods: [full], overrides: {train.lr: 0.0003}}
    tasks: [code2doc, {task: {name: doc_match}, overrides: {data.max_target_length: 4}}]
    seeds: [0, 1, 2]
    budget: {steps: 300}                  # or {seconds: 600}: equal wall-clock training time
    batch_size: {fit: true, max: 64}      # the largest batch that fits (peftlab.lab.bench.batchfit)
    report: {metrics: [rouge_l, bleu]}    # what ``peftlab report`` shows (peftlab.lab.report)
    workers: 2                            # runs side by side, each on cores // 2 threads (or its own GPU)
    launcher: ray                         # or slurm: each run a task of a cluster (peftlab.lab.launch)
    ray: {address: auto, cpus: 4, gpus: 1}

The bench directory holds ``bench.yaml`` (the spec as given), ``bench.json`` (the index of runs,
their state and the batch size each used) and, at the end, the report (``peftlab.lab.report``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from pathlib import Path
from typing import Optional

from peftlab.lab import rundir
from peftlab.config import to_dict
from peftlab.errors import PeftlabError
from peftlab.lab.evals import is_current
from peftlab.lab.bench.preflight import check_applicable, plan_digest
from peftlab.lab.bench.plan import Bench, PlannedRun, load_bench, slug
from peftlab.tasks import TaskConfig

log = logging.getLogger(__name__)

INDEX = "bench.json"
SPEC_COPY = "bench.yaml"
BATCH_FIT = "batch_fit.json"  # in DIR/<task>/<method>/: the batch size fitted for that pair
TUNING = "tuning.json"  # in DIR/<task>/<method>/: the learning rates tried, their validation scores, the choice


# ------------------------------------------------------------------------------------- running


def run_bench(path: Path, out: Path, *, overrides: tuple[str, ...] = (), progress: bool = True,
              report: bool = True) -> dict:
    """Run every planned run of the spec at ``path`` into ``out`` (see the module docstring);
    returns the index written to ``out/bench.json``. Failed runs are recorded and the bench goes on;
    a ``BenchError`` at the end names them."""
    bench = load_bench(path, overrides)  # every config checked before anything runs
    check_applicable(bench.runs)  # and every method list applied to its model (meta device)
    out = Path(out)
    rundir.make_dir(out, "--out")
    with rundir.owned(out), rundir.stop_on_signals():  # one bench per directory; SIGTERM stops it cleanly
        rundir.write_text(out / SPEC_COPY, Path(path).read_text(encoding="utf-8"))
        index = _index(bench, out)
        index["plan_digest"] = plan_digest(bench.spec, bench.runs)
        if bench.spec.workers > 1 or bench.spec.launcher != "local":
            _dispatched(bench, path, overrides, out, index)
        for i, planned in enumerate(bench.runs):
            if index["runs"][i]["state"] != "pending":  # done side by side, or through a launcher
                continue
            log.info("[%d/%d] %s", i + 1, len(bench.runs), planned.rel)
            reused = _reusable(bench, planned, out)
            if reused is not None:  # complete with this config: nothing to start a process for
                index["runs"][i].update(reused)
            elif bench.spec.isolate:
                index["runs"][i].update(_one_in_a_process(path, overrides, i, out, progress, index["plan_digest"]))
            else:
                index["runs"][i].update(_one(bench, planned, out, progress))
            _logged(bench, i, index, out)
            gc.collect()  # nothing of the run outlives it (bounded memory over a long bench)
            _empty_cuda_cache()
        if report:
            from peftlab.lab.report import write_report

            write_report(out)
    failed = [r for r in index["runs"] if r["state"] != "complete"]
    if failed:
        names = "; ".join(f"{r['dir']}: {r.get('error', '?')}" + (f" (log: {r['log']})" if r.get("log") else "")
                          for r in failed[:5])
        raise BenchError(f"{len(failed)} of {len(index['runs'])} runs did not finish ({names}); an error in a run's "
                         f"input or config fails again until it is fixed: fix what each says, then rerun the same "
                         f"command, which continues them (finished runs are kept; a run stopped by a signal or a "
                         f"full disk needs only the rerun)")
    return index


def _logged(bench: Bench, i: int, index: dict, out: Path) -> None:
    run = index["runs"][i]
    log.info("[%d/%d] %s: %s", i + 1, len(bench.runs), bench.runs[i].rel,
             run.get("how") if run["state"] == "complete" else "FAILED")
    index["updated"] = rundir.now()
    rundir.write_json(out / INDEX, index)


def _dispatched(bench: Bench, path: Path, overrides: tuple[str, ...], out: Path, index: dict) -> None:
    """Every run not already complete through the spec's launcher (``peftlab.lab.launch``): ``workers``
    child processes side by side here, or tasks of a Ray or SLURM cluster; a main run once its pair's
    tuning runs have ended (and, where batch sizes are fitted, once the pair's first run has). No
    progress bars (their lines would interleave); the index is written as each run ends."""
    from peftlab.lab.child import Job
    from peftlab.lab.launch import launcher_for, retries_of
    from peftlab.lab.launch.base import run_all

    spec, here = bench.spec, out.resolve()  # absolute: a cluster's node starts elsewhere
    jobs, first = [], {}
    for i, planned in enumerate(bench.runs):
        reused = _reusable(bench, planned, out)
        if reused is not None:
            index["runs"][i].update(reused)
            continue
        after = [j for j, r in enumerate(bench.runs) if r.stage == "tune" and r.pair == planned.pair
                 and planned.stage == "main"]
        if spec.batch_size.fit and first.setdefault(planned.pair, i) != i:
            after.append(first[planned.pair])  # one fit per pair, made where its first run runs
        args = [str(Path(path).resolve()), str(here), str(i), json.dumps(list(overrides)), "0", index["plan_digest"]]
        logged = here / "launch" / f"{planned.rel.replace('/', '--')}.log" if spec.launcher != "local" else None
        jobs.append(Job(i, "peftlab.lab.bench.run", args, here / f".run-{i}.json", name=planned.rel, log=logged,
                        run_dir=here / planned.rel, after=tuple(after)))
    launcher = launcher_for(spec, spec.workers, here / "launch")
    if spec.launcher == "local":
        threads = int(launcher.slots[0].get("OMP_NUM_THREADS", 0)) or None
        index["workers"] = {"runs": spec.workers, "threads_each": threads}
    else:
        index["launcher"] = {"name": spec.launcher, **to_dict(getattr(spec, spec.launcher))}
    rundir.write_json(out / INDEX, index)

    def done(job, outcome: dict) -> None:
        index["runs"][job.key].update(outcome)
        _logged(bench, job.key, index, out)

    log.info("%d runs to train, %s", len(jobs), f"{spec.workers} side by side" if spec.launcher == "local"
             else f"each a {spec.launcher} task (logs in {here / 'launch'})")
    try:
        run_all(launcher, jobs, done, here / "launch", retries_of(spec))
    finally:
        launcher.close()


class BenchError(PeftlabError):
    """Some runs of a bench failed (the others are complete and reported)."""


def _index(bench: Bench, out: Path) -> dict:
    from peftlab.device import hardware
    from peftlab.provenance import versions

    tasks = []
    for entry in bench.spec.tasks:
        cfg = next(r.config for r in bench.runs if r.task == entry.display_name())
        tasks.append({"label": entry.display_name(), "dir": slug(entry.display_name()),
                      "tasks": [_task_info(t) for t in cfg.data.tasks]})
    return {
        "spec": str(bench.path), "title": bench.spec.report.title or bench.path.stem,
        "budget": to_dict(bench.spec.budget), "batch_size": to_dict(bench.spec.batch_size),
        "report": to_dict(bench.spec.report), "seeds": list(bench.spec.seeds), "evals": dict(bench.spec.evals),
        "methods": [{"label": m, "dir": slug(m)} for m in bench.method_labels], "tasks": tasks,
        "runs": [{"method": r.method, "task": r.task, "seed": r.seed, "dir": r.rel, "state": "pending",
                  **({"stage": "tune", "lr": r.lr} if r.stage == "tune" else {})} for r in bench.runs],
        "tuning": to_dict(bench.spec.tuning) if bench.spec.tuning else None,
        "started": _first_started(out), **hardware(), "versions": versions(),
    }


def _first_started(out: Path) -> str:
    """When the bench first started: kept from an earlier index of ``out`` (a resumed bench), else now."""
    try:
        return str(json.loads((out / INDEX).read_text())["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return rundir.now()


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
            cfg = _with_batch(cfg, _fitted(bench, planned, out / planned.pair))
        cfg = _with_tuned_lr(bench, planned, cfg, out)
        how = train_or_resume(cfg, run_dir, progress, name=planned.rel, group=out.name)  # as its trackers show it
        if planned.stage == "main":
            _evaluate(bench, run_dir)
        return {"state": "complete", "how": how, "batch_size": cfg.train.batch_size, "error": None}
    except PeftlabError as e:  # a bad run (data, model, numerics) does not stop the others
        log.error("%s: %s", run_dir, e)
        return {"state": "failed", "error": str(e)}
    except (RuntimeError, ValueError, OSError) as e:  # e.g. out of memory: recorded, the bench goes on
        log.error("%s: %s: %s", run_dir, type(e).__name__, e)
        return {"state": "failed", "error": f"{type(e).__name__}: {e}"}


def _one_in_a_process(path: Path, overrides: tuple[str, ...], i: int, out: Path, progress: bool, digest: str) -> dict:
    """``_one`` for run ``i`` in a child process (``python -m peftlab.lab.bench.run``; ``peftlab.lab.child``),
    which refuses to run if the spec no longer plans what ``digest`` says the bench started with."""
    from peftlab.lab.child import in_a_process

    args = [str(path), str(out), str(i), json.dumps(list(overrides)), "1" if progress else "0", digest]
    return in_a_process("peftlab.lab.bench.run", args, out / f".run-{i}.json")


def child(argv: list[str]) -> int:
    """``python -m peftlab.lab.bench.run SPEC OUT I OVERRIDES PROGRESS DIGEST RESULT``: one run of a bench."""
    from peftlab.lab.child import child_main

    spec, out, i, overrides, progress, digest, result = argv

    def work(show_progress: bool) -> dict:
        bench = load_bench(Path(spec), tuple(json.loads(overrides)))
        if plan_digest(bench.spec, bench.runs) != digest:
            raise BenchError(f"{spec} (or a run config it names) changed while the bench ran: this run would train "
                             f"another plan than the one started; rerun the bench to use the edited spec")
        return _one(bench, bench.runs[int(i)], Path(out), show_progress)

    return child_main(result, progress, work)


def _reusable(bench: Bench, planned: PlannedRun, out: Path) -> Optional[dict]:
    """The index fields of a run already complete with its config (batch size as fitted), else None."""
    from peftlab.lab.run import same_config

    run_dir, cfg = out / planned.rel, planned.config
    if rundir.read_status(run_dir).get("state") != "complete":
        return None
    if bench.spec.batch_size.fit:
        record = out / planned.pair / BATCH_FIT
        if not record.is_file():
            return None
        cfg = _with_batch(cfg, int(json.loads(record.read_text())["batch_size"]))
    try:
        cfg = _with_tuned_lr(bench, planned, cfg, out)
    except PeftlabError:  # tuning not finished: the run's process will say so
        return None
    if not same_config(run_dir, cfg):
        return None
    if planned.stage == "main" and any(not is_current(run_dir, name, edits)
                                       for name, edits in bench.spec.evals.items()):
        return None  # an evaluation to make: the run's process reuses the training and scores it
    return {"state": "complete", "how": "reused", "batch_size": cfg.train.batch_size, "error": None}


def _evaluate(bench: Bench, run_dir: Path) -> None:
    """The spec's ``evals`` of a complete run, each unless already made with the same edits."""
    from peftlab.lab.evals import evaluate_on

    for name, edits in bench.spec.evals.items():
        if not is_current(run_dir, name, edits):
            log.info("%s: evaluation %s", run_dir, name)
            evaluate_on(run_dir, name, edits)


def _with_tuned_lr(bench: Bench, planned: PlannedRun, cfg, out: Path):
    """A main run of a tuned row trains at the rate its tuning runs chose (``tuning.json``)."""
    if bench.spec.tuning is None or planned.stage != "main" or not bench.spec.methods[planned.method_index].grid():
        return cfg
    tuned = [r for r in bench.runs if r.stage == "tune" and r.pair == planned.pair]
    choice = choose_lr([(r.lr, _tuning_result(out / r.rel, r.config)) for r in tuned])
    rundir.write_json(out / planned.pair / TUNING, choice)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=choice["chosen"]))


def _tuning_result(run_dir: Path, cfg) -> Optional[dict]:
    """A finished tuning run's validation scores: the mean of its tasks' primary metrics, its
    validation loss and seconds; None if it did not finish (a rate so high that training diverged)."""
    if rundir.read_status(run_dir).get("state") != "complete":
        state = rundir.read_status(run_dir).get("state")
        if state in (None, "running", "interrupted"):
            raise TuningError(f"{run_dir}: the tuning run has not finished ({state or 'not started'}); its row's "
                              f"seeds train at the rate the tuning runs choose")
        return None
    m = json.loads((run_dir / rundir.METRICS).read_text())
    primaries = [(m.get("task_metrics") or {}).get(t.describe(), {}).get(t.primary_metric) for t in cfg.data.tasks]
    score = sum(primaries) / len(primaries) if all(isinstance(p, (int, float)) for p in primaries) else None
    return {"score": score, "eval_loss": m.get("eval_loss"), "train_seconds": m.get("train_seconds"),
            "metric": " + ".join(f"{t.describe()} {t.primary_metric}" for t in cfg.data.tasks)}


def choose_lr(results: list[tuple[float, Optional[dict]]]) -> dict:
    """The learning rate with the best validation score; where every finished run scored the same
    (a flat metric: the majority class everywhere), the lowest validation loss. Says which."""
    done = [(lr, r) for lr, r in results if r is not None and r["score"] is not None]
    if not done:
        raise TuningError(f"every tuning run failed (learning rates {[lr for lr, _ in results]}): widen or lower "
                          f"the grid")
    scores = [r["score"] for _, r in done]
    flat = max(scores) - min(scores) < 1e-9 and all(r.get("eval_loss") is not None for _, r in done)
    if flat:
        lr, best = min(done, key=lambda x: x[1]["eval_loss"])
        by = f"validation loss (the validation {done[0][1]['metric']} was {scores[0]:.2f} at every rate)"
    else:
        lr, best = max(done, key=lambda x: (x[1]["score"], -(x[1].get("eval_loss") or 0.0)))
        by = f"validation {best['metric']}"
    return {"grid": [lr for lr, _ in results], "results": [r for _, r in results], "chosen": lr, "chosen_by": by,
            "tuning_runs": len(results), "tuning_seconds": sum((r or {}).get("train_seconds") or 0.0 for _, r in results)}


class TuningError(PeftlabError):
    """A row's learning rate cannot be chosen (its tuning runs have not finished, or all failed)."""


def _with_batch(cfg, batch_size: int):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size))


def _fitted(bench: Bench, planned: PlannedRun, pair_dir: Path) -> int:
    """The batch size fitted for this method × task (once; kept in ``batch_fit.json`` so that a
    resumed bench, and every seed, uses the same one)."""
    from peftlab.lab.bench.batchfit import fit_batch_size

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


def train_or_resume(cfg, run_dir: Path, progress: bool, name: Optional[str] = None,
                    group: Optional[str] = None) -> str:
    """Reuse, resume or train ``run_dir``; says which. ``name`` and ``group``: the run as the trackers of
    ``train.report_to`` show it (``<task>/<method>/seed<k>`` in the bench directory's name)."""
    from peftlab.lab.run import same_config
    from peftlab.lab.run import resume_run, train_run

    state = rundir.read_status(run_dir).get("state")
    same = state is not None and same_config(run_dir, cfg)
    if state == "complete" and same:
        return "reused"
    if state in ("interrupted", "running") and same:
        resume_run(run_dir, progress=progress, name=name, group=group)  # refused if its process still runs
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
    train_run(cfg, run_dir, progress=progress, name=name, group=group)
    return "trained"


def _empty_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    import sys

    sys.exit(child(sys.argv[1:]))
