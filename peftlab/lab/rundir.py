"""Run directories: what a run writes, written so that a partial run never looks finished.

``status.json`` says ``running`` from the first moment, ``failed`` (with the error) if the run
raised, ``interrupted`` (with the last checkpoint) if SIGTERM/SIGINT stopped it, and ``complete``
only after ``metrics.json`` -- the last file -- is in place. ``trained.json`` appears once training
is over and the adapter is saved whole: from then on the run can be evaluated, exported, or resumed
to score it, whatever happens to scoring. Every JSON file is written to a temporary name and
renamed, so readers never see half a file.

A directory is owned by one process at a time: ``acquire`` takes ``.peftlab.lock`` (an ``flock``
held for as long as the process owns the directory, with the owner's pid, host and command in
the file for messages); a lock whose owner died is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

from peftlab.errors import RunDirError
from peftlab.files import LOCK, acquire, make_dir, now, owned, release, write_json, write_text  # noqa: F401  (re-exported)

CONFIG = "config.yaml"
STATUS = "status.json"
METRICS = "metrics.json"
TRAIN_LOG = "train_log.jsonl"
PREDICTIONS = "predictions.jsonl"
ROW_STATS = "row_stats.json"  # per-row statistics of the test scores and floors (intervals, paired tests)
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
TRAINED = "trained.json"  # training's own results, written once the adapter is saved whole
log = logging.getLogger(__name__)


def create(run_dir: Path) -> Path:
    """Make a fresh run directory and own it (``acquire``); refuse to reuse one that holds
    anything (never clobber results)."""
    make_dir(run_dir, "--out")
    acquire(run_dir)
    if any(p.name != LOCK for p in run_dir.iterdir()):
        release(run_dir)
        state = read_status(run_dir).get("state", "unknown") if (run_dir / STATUS).exists() else "not a run"
        raise RunDirError(f"{run_dir}: already exists ({state}); {what_next(run_dir, state)}")
    set_status(run_dir, "running", started=now())
    return run_dir


UNFINISHED = ("failed", "interrupted", "running")  # "running" without a live owner: killed (SIGKILL, power)


def what_next(run_dir: Path, state: str) -> str:
    """What to do about an existing run directory that a new run was pointed at."""
    if state == "complete":
        return "choose another --out (a finished run is never overwritten)"
    if state in UNFINISHED:
        return (f"continue it with `peftlab train --resume {run_dir}`, or start it again with --overwrite (the "
                f"old directory is renamed aside, never deleted)")
    return "choose another --out or remove it"


def set_aside(run_dir: Path) -> Path | None:
    """``peftlab train --overwrite``: rename a failed or interrupted run directory to
    ``RUN.<state>-<time>`` (nothing is deleted) so that a fresh run takes its place; returns the new
    name (None: nothing there). A complete run, a directory that is not a run and one whose process
    still lives are refused."""
    if not run_dir.is_dir() or not any(p.name != LOCK for p in run_dir.iterdir()):
        return None
    state = read_status(run_dir).get("state") if (run_dir / STATUS).exists() else None
    if state == "complete":
        raise RunDirError(f"{run_dir}: already exists (complete); --overwrite never replaces a finished run: "
                          f"choose another --out")
    if state not in UNFINISHED:
        raise RunDirError(f"{run_dir}: not a run directory ({state or 'no status.json'}); --overwrite only sets "
                          f"aside a failed or interrupted run: choose another --out")
    with owned(run_dir):  # refused while a live process writes it
        pass
    aside = run_dir.with_name(f"{run_dir.name}.{state}-{now().replace(':', '')}")
    run_dir.rename(aside)
    log.warning("%s: %s; set aside as %s", run_dir, state, aside.name)
    return aside


def create_plain(out: Path) -> Path:
    """An output directory that must be new or empty (exports never overwrite anything)."""
    if out.is_dir() and any(out.iterdir()):
        raise RunDirError(f"{out}: already exists and is not empty; choose another --out")
    make_dir(out, "--out")
    if not os.access(out, os.W_OK):
        raise RunDirError(f"{out}: not writable; choose another --out")
    return out


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STATUS).read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:
        return {"state": "corrupt"}


_STOP_FIELDS = ("resume", "last_checkpoint", "finished", "error")  # why and where a run stopped, and what next


def set_status(run_dir: Path, state: str, **extra) -> None:
    """Write ``state`` and ``extra`` into ``status.json``, keeping its other fields; a run that runs
    again or completes drops what its last stop recorded (``resume`` advice, its checkpoint, its error)."""
    data = read_status(run_dir) if (run_dir / STATUS).exists() else {}
    if state in ("running", "complete"):
        for key in _STOP_FIELDS:
            data.pop(key, None)
    data.update(extra, state=state, updated=now())
    write_json(run_dir / STATUS, data)


def require_complete(run_dir: Path) -> None:
    """Raise unless ``run_dir`` holds a trained adapter: a finished run, or one whose training
    finished and whose scoring failed or was stopped (``trained.json``; resume it to score)."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    state = read_status(run_dir).get("state")
    if trained(run_dir):
        return
    if state != "complete" or not (run_dir / METRICS).is_file():
        raise RunDirError(f"{run_dir}: not a finished run (status: {state or 'missing'})")


def require_resumable(run_dir: Path, own: bool = True) -> None:
    """Raise unless ``run_dir`` is an unfinished run; with ``own``, take it (``acquire``) first, so
    a run whose process still lives is refused rather than written by two processes."""
    if not read_status(run_dir):
        raise RunDirError(f"{run_dir}: not a run directory (no status.json)")
    if own:
        acquire(run_dir)
    if read_status(run_dir).get("state") == "complete":  # read again: its owner may just have finished
        if own:
            release(run_dir)
        raise RunDirError(f"{run_dir}: already complete; nothing to resume")


def require_writable(directory: Path, why: str) -> None:
    """Refuse up front (before any work) a directory this process cannot write into."""
    if directory.is_dir() and not os.access(directory, os.W_OK):
        raise RunDirError(f"{directory}: read-only, and {why}; make it writable, or copy it "
                          f"(cp -r {directory} NEW) and use the copy")


def trained(run_dir: Path) -> bool:
    """Training is over and the adapter was saved whole (what ``trained.json`` records)."""
    return (run_dir / TRAINED).is_file()


def read_trained(run_dir: Path) -> dict:
    return json.loads((run_dir / TRAINED).read_text())


# --------------------------------------------------------------------------- one owner at a time

class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``timeout``) stops a run the way Ctrl-C does: as an interruption."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGTERM raises ``Interrupted`` in the main thread (once: a second SIGTERM
    while the run records its status is ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted("SIGTERM", signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def last_checkpoint(run_dir: Path) -> Path | None:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.json").is_file())
    return done[-1] if done else None


def stopped(run_dir: Path, exc: BaseException) -> BaseException:
    """Record why a run stopped (``interrupted`` with the last checkpoint, or ``failed``) and
    return the exception to raise: an environment error (full disk, read-only files) becomes one
    line saying what happened and what to do next."""
    ckpt = last_checkpoint(run_dir)
    after = "its adapter is saved" if trained(run_dir) else (
        f"it continues from {ckpt.name}" if ckpt else "it starts again from step 0")
    resume = f"peftlab train --resume {run_dir}"
    state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    # a bare KeyboardInterrupt (Ctrl-C) says nothing: name the signal (SIGTERM comes as Interrupted with its own)
    why = str(exc) or signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
    error = f"{type(exc).__name__}: {exc}" if state == "failed" else f"interrupted ({why})"
    try:
        set_status(run_dir, state, error=error, finished=now(), last_checkpoint=str(ckpt) if ckpt else None,
                   resume=resume)
    except OSError as e:  # the disk that failed the run may fail this too: say so, keep the first error
        log.error("%s: could not record %r in %s (%s)", run_dir, state, STATUS, e.strerror)
    if isinstance(exc, KeyboardInterrupt):
        out = Interrupted(f"{run_dir} stopped by {why}; {after}: {resume}",
                          getattr(exc, "signum", signal.SIGINT))
        out.__cause__ = exc
        return out
    if isinstance(exc, OSError) and not isinstance(exc, RunDirError):
        what = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
                errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}.get(exc.errno, exc.strerror)
        out = RunDirError(f"{run_dir}: {what} writing {exc.filename or 'a file'}; nothing written before is "
                          f"lost ({'the run is marked failed' if state == 'failed' else state}); fix that, "
                          f"then {resume} ({after})")
        out.__cause__ = exc
        return out
    return exc


def read_metrics(run_dir: Path) -> dict:
    """``metrics.json`` of a run; ``RunDirError`` naming the file when it is not a JSON object."""
    path = run_dir / METRICS
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunDirError(f"{path}: unreadable ({e}); rerun that config with --overwrite") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: not a JSON object (a {type(data).__name__}); the run's record is damaged")
    return data
