"""A search's trials as tasks: ``parallel`` trials in flight, each trained by its own process through
the spec's launcher (``peftlab.lab.launch``: side by side here, Ray tasks, SLURM jobs).

The coordinator alone speaks to the study (``DIR/study.db``): it asks a trial, samples and counts it
(``peftlab.lab.search.trials.ask_trial``), submits ``python -m peftlab.lab.search.launched`` to train it,
and tells the study the trial's score when its task ends. With TPE the trials in flight are counted as
if they had scored the worst so far (constant liar) so that parallel trials spread out; NSGA-II draws
a generation's trials independently anyway. A trial that draws a configuration already in flight is
told that trial's result, never trained twice. A coordinator killed mid-search leaves its trials
``RUNNING``; the next one retries each in the run directory it had (``resumes``): its job, if a
cluster still runs it, is followed, else its run resumes from its checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from peftlab.lab import rundir
from peftlab.errors import PeftlabError

log = logging.getLogger(__name__)


def run_launched(study, search, out: Path, path: Path, overrides: tuple[str, ...], told=lambda: None) -> None:
    """Trials until ``search.spec.trials`` have finished, ``search.spec.parallel`` at a time; ``told()``
    after each trial's result is told (the search writes its Pareto front)."""
    from peftlab.lab.launch import launcher_for, retries_of
    from peftlab.lab.launch.base import Dispatcher
    from peftlab.lab.search.trials import ask_trial, finished_trials, search_digest

    spec, here = search.spec, Path(out).resolve()
    digest = search_digest(search)[0]
    launcher = launcher_for(spec, spec.parallel, here / "launch")
    dispatcher = Dispatcher(launcher, here / "launch", retries_of(spec))
    flying: dict[int, tuple] = {}  # trial number -> (trial, methods, trials that drew the same: told with it)
    try:
        while True:
            while len(flying) < spec.parallel and finished_trials(study) + _count(flying) < spec.trials:
                asked = ask_trial(study, search, out)
                if asked is None:  # told at once: pruned, cannot apply, or the same as a finished trial
                    continue
                trial, methods, _, _ = asked
                twin = next((f for f in flying.values() if f[1] == methods), None)
                if twin is not None:  # the same configuration is training now: its result stands for both
                    trial.set_user_attr("same_as", twin[0].number)
                    twin[2].append(trial)
                    continue
                (here / "trials").mkdir(exist_ok=True)
                dispatcher.start([_job(search, here, path, overrides, digest, trial, methods)])
                flying[trial.number] = (trial, methods, [])
            if not flying:
                return
            for job, outcome in dispatcher.ended():
                _tell(study, search, here, flying.pop(job.key), outcome)
                told()
    except BaseException:
        dispatcher.stop()  # the trials stay RUNNING: the next search retries them where they stopped
        raise
    finally:
        launcher.close()


def _count(flying: dict) -> int:
    return sum(1 + len(twins) for _, _, twins in flying.values())


def _job(search, here: Path, path: Path, overrides, digest: str, trial, methods: list):
    """The trial's child process: ``DIR/<run_dir>`` trained with ``methods`` (absolute paths: a
    cluster's node starts elsewhere)."""
    from peftlab.lab.child import Job

    rel = trial.user_attrs["run_dir"]
    args = [str(Path(path).resolve()), str(here), rel, json.dumps(methods), json.dumps(list(overrides)), digest]
    logged = here / "launch" / f"{rel.replace('/', '--')}.log" if search.spec.launcher != "local" else None
    return Job(trial.number, "peftlab.lab.search.launched", args, here / f".trial-{trial.number}.json", name=rel,
               log=logged, run_dir=here / rel)


def _tell(study, search, here: Path, flying: tuple, outcome: dict) -> None:
    from optuna.trial import TrialState

    from peftlab.lab.search.trials import trial_values

    trial, _, twins = flying
    values = None
    if outcome.get("state") == "complete":
        values = trial_values(study, rundir.read_metrics(here / trial.user_attrs["run_dir"]), trial.user_attrs)
    error = None if values is not None else (outcome.get("error") or f"no {search.metric} in its metrics") + (
        f" (log: {outcome['log']})" if outcome.get("log") else "")
    for t in (trial, *twins):
        if values is not None:
            study.tell(t, values)
        else:
            t.set_user_attr("error", error)
            study.tell(t, state=TrialState.FAIL)
    if values is not None:
        log.info("trial %d: %s %s = %.3f%s", trial.number, search.task, search.metric, values[0],
                 f" (and {', '.join(str(t.number) for t in twins)}, the same)" if twins else "")
    else:
        log.warning("trial %d failed: %s", trial.number, error)


class SearchError(PeftlabError):
    """A trial's process found a spec other than the one its search started with."""


def child(argv: list[str]) -> int:
    """``python -m peftlab.lab.search.launched SPEC OUT RUN METHODS OVERRIDES DIGEST RESULT``: one trial
    trained (or resumed, or reused) in ``OUT/RUN``."""
    from peftlab.lab.bench.run import train_or_resume
    from peftlab.lab.child import child_main
    from peftlab.lab.search.trials import search_digest
    from peftlab.lab.search.spec import load_search, trial_config

    spec, out, rel, methods, overrides, digest, result = argv

    def work(progress: bool) -> dict:
        search = load_search(Path(spec), tuple(json.loads(overrides)))
        if search_digest(search)[0] != digest:
            raise SearchError(f"{spec} (or the run config it names) changed while the search ran: this trial would "
                              f"train another search's configuration; rerun the search to use the edited spec")
        cfg = trial_config(search, json.loads(methods))
        return {"state": "complete", "how": train_or_resume(cfg, Path(out) / rel, progress)}

    return child_main(result, "0", work)


if __name__ == "__main__":
    import sys

    sys.exit(child(sys.argv[1:]))
