"""Experiment trackers (``train.report_to``): TensorBoard, Weights & Biases, MLflow and trackio,
through accelerate's trackers, beside ``train_log.jsonl`` (which stays the run's own record).

Each tracker gets the rows the log gets (loss, learning rate, tokens/s, validation loss, at their
optimizer step; numbers only) and, once at the start, the run's config as hyperparameters (flattened:
``train.lr``, ``methods.0.r``). Where they write:

* ``tensorboard``: event files under ``RUN/tensorboard/``, so ``tensorboard --logdir BENCH`` shows
  every run of a bench under its path;
* ``wandb``: the project ``Tracking.project``, the run named ``Tracking.name`` in the group
  ``Tracking.group`` (a bench's directory name), local files under ``RUN/`` (``WANDB_MODE=offline``
  for no network: wandb's own setting);
* ``mlflow``: the experiment ``Tracking.project``, the run ``Tracking.name`` (``MLFLOW_TRACKING_URI``
  says where: mlflow's own setting);
* ``trackio``: the project ``Tracking.project``, the run ``Tracking.name``.

A tracker's package is imported only when a run asks for it (accelerate's tracker classes import
it when they start), and a missing one is refused by name before any training.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from peftlab.errors import ConfigError

# tracker -> the package it needs and where it comes from
TRACKERS = {"tensorboard": ("tensorboard", "pip install 'peftlab[trackers]'"),
            "wandb": ("wandb", "pip install wandb"), "mlflow": ("mlflow", "pip install mlflow"),
            "trackio": ("trackio", "pip install trackio")}


@dataclass(frozen=True)
class Tracking:
    """Who a run is to the trackers."""

    name: str  # the run's name (a bench's run: <task>/<method>/seed<k>)
    directory: Optional[Path] = None  # the run directory: TensorBoard's events and W&B's files go there
    config: dict = field(default_factory=dict)  # the run's config, logged once as hyperparameters
    project: str = "peftlab"  # W&B and trackio project, MLflow experiment
    group: Optional[str] = None  # W&B group: the runs of one bench

    @classmethod
    def of(cls, cfg, run_dir: Path, name: Optional[str] = None, group: Optional[str] = None) -> "Tracking":
        """A run (a ``RunConfig`` trained into ``run_dir``) as its trackers name it: ``name``, else the
        directory's name."""
        from peftlab.config import to_dict

        return cls(name or Path(run_dir).name, Path(run_dir), to_dict(cfg), cfg.train.report_project, group)


def check_available(names) -> None:
    """Refuse, before any work, a tracker whose package is not installed (naming how to install it)."""
    missing = [n for n in names if importlib.util.find_spec(TRACKERS[n][0]) is None]
    if missing:
        raise ConfigError("train.report_to: " + "; ".join(f"{n} needs the {TRACKERS[n][0]} package, which is not "
                                                          f"installed ({TRACKERS[n][1]})" for n in missing))


def make_trackers(names, tracking: Tracking) -> list:
    """accelerate's tracker objects for ``names`` (``Accelerator(log_with=...)``), not started yet."""
    from accelerate import tracking as at

    check_available(names)
    where = Path(tracking.directory) if tracking.directory is not None else Path.cwd()
    out = []
    for name in names:
        if name == "tensorboard":
            out.append(at.TensorBoardTracker("tensorboard", where))  # -> RUN/tensorboard/
        elif name == "wandb":
            out.append(at.WandBTracker(tracking.project, name=tracking.name, group=tracking.group, dir=str(where)))
        elif name == "mlflow":
            tags = {"peftlab.group": tracking.group} if tracking.group else None
            out.append(at.MLflowTracker(tracking.project, run_name=tracking.name, tags=tags))
        elif name == "trackio":
            out.append(at.TrackioTracker(tracking.project, name=tracking.name))
    return out


@contextlib.contextmanager
def tracked(accelerator, tracking: Tracking, log_row: Callable[[dict], None]) -> Iterator[Callable[[dict], None]]:
    """While inside, the accelerator's trackers (if it has any) are started, with the run's config as
    their hyperparameters, and the ``log_row`` given out also logs each row to them; they are closed
    on the way out, however the loop ends."""
    if not accelerator.log_with:
        yield log_row
        return
    accelerator.init_trackers(tracking.project, config=flat(tracking.config))

    def both(row: dict) -> None:
        log_row(row)
        log(accelerator, row)

    try:
        yield both
    finally:
        finish(accelerator)


def log(accelerator, row: dict) -> None:
    """One ``train_log.jsonl`` row to every tracker, at its step (its numbers only)."""
    values = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if values and accelerator.trackers:
        accelerator.log(values, step=int(row["step"]))


def finish(accelerator) -> None:
    """Close every tracker (flush TensorBoard's files, end the W&B / MLflow / trackio run)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def flat(config: Any, prefix: str = "") -> dict:
    """A nested config as ``{"train.lr": 0.001, "methods.0.r": 8}``: scalars as they are, null as
    ``"null"``, an empty list or mapping as its JSON (what every tracker accepts as a hyperparameter)."""
    if isinstance(config, dict) and config:
        return {k: v for key, value in config.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    if isinstance(config, (list, tuple)) and config:
        return {k: v for i, value in enumerate(config) for k, v in flat(value, f"{prefix}{i}.").items()}
    key = prefix[:-1] or "config"
    if config is None:
        return {key: "null"}
    if isinstance(config, (bool, int, float, str)):
        return {key: config}
    return {key: json.dumps(config, default=str)}
