"""A search's trials, as the coordinator handles them: asked from the study, sampled, counted and checked
before anything trains (``ask_trial``), scored from their metrics (``trial_values``), counted as finished
(``finished_trials``); and what the trials of one search are made by (``search_digest``). Shared by the
search run in this process (``peftlab.lab.search.run``) and the one whose trials are tasks
(``peftlab.lab.search.launched``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from peftlab.errors import PeftlabError
from peftlab.lab.search.spec import Search, sample, trial_config

log = logging.getLogger(__name__)


def trainable_params(cfg) -> int:
    """What a trial would train, counted on a fresh build (then dropped)."""
    import gc

    from peftlab.lab.run import build

    loaded, state = build(cfg)
    n = state.trainable_params(loaded.model)
    del loaded, state
    gc.collect()
    return n


def search_digest(search: Search) -> tuple[str, dict]:
    """What the trials are made by: the spec less the number of trials and where they run, and a
    trial's base run config; with its SHA-256 (which every trial's process checks)."""
    import hashlib

    from peftlab.config import to_dict
    from peftlab.lab.launch.spec import LAUNCH_FIELDS

    plan = {k: v for k, v in to_dict(search.spec).items() if k != "trials" and k not in LAUNCH_FIELDS}
    plan["trial_base"] = to_dict(trial_config(search, []))
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest(), plan


def finished_trials(study) -> int:
    from optuna.trial import TrialState

    # a failed trial with no error of ours was stopped mid-run (peftlab.lab.search.run): retried, not counted
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and "error" in t.user_attrs) for t in study.trials)


def trial_values(study, metrics: dict, attrs: dict) -> Optional[list]:
    task = attrs.get("task")
    score = (metrics.get("task_metrics") or {}).get(task, {}).get(attrs.get("metric"))
    if score is None:
        return None
    return [score, metrics["trainable_params"]] if len(study.directions) == 2 else [score]


def ask_trial(study, search: Search, out: Path):
    """A new trial, sampled, counted and checked: ``(trial, methods, cfg, run_dir)`` to train, or None
    when it was told at once (a combination the model has no place for, over ``max_params``, the same
    as a trial already trained). A retried trial (``resumes``) trains in the directory it resumes."""
    from optuna.trial import TrialState

    trial = study.ask()
    methods = sample(trial, search)
    run = out / "trials" / f"{int(trial.user_attrs.get('resumes', trial.number)):04d}"
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
        return None
    trial.set_user_attr("trainable_params", n)
    if search.spec.max_params is not None and n > search.spec.max_params:
        trial.set_user_attr("error", f"{n:,} trainable parameters > max_params {search.spec.max_params:,}")
        study.tell(trial, state=TrialState.PRUNED)
        return None
    same = _same_as(study, methods)
    if same is not None:  # the sampler drew a configuration already trained: its result stands
        trial.set_user_attr("same_as", same.number)
        study.tell(trial, same.values)
        return None
    return trial, methods, cfg, run


def _same_as(study, methods: list[dict]):
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("methods") == methods:
            return t
    return None
