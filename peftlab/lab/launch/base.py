"""The launcher protocol, the one function every engine runs, and the coordinator's loop.

A ``Launcher`` decides where a ``Job`` (``peftlab.lab.child``: ``python -m MODULE ARGS RESULT``, a
bench run's or a search trial's child entry) runs and how its outcome comes back:

- ``submit(jobs) -> handles`` starts them (an engine may pack them into one submission: a job array);
- ``poll(handle) -> bool`` says whether one has ended, ``outcome(handle) -> dict`` what it came to:
  the child's outcome (``state`` complete / failed / interrupted, ``error``), or ``failed`` with
  ``lost: True`` when the task died without one (its node, worker or job was lost);
- ``cancel(handle)`` stops one; ``record(handle)`` is what finds it again after the coordinator was
  killed (None: it dies with the coordinator), ``reattach(record)`` its handle if it still lives;
- ``capacity`` (jobs at once; None: the engine queues them), ``poll_seconds``, ``dies_with_coordinator``.

``execute(job, env)`` is what runs on the engine's machine: it waits while another process owns the
job's run directory (a task of a killed coordinator that is still ending), then runs the job's child
process with its output in the job's log, and returns the outcome (with the log and the host).

``Dispatcher`` is the coordinator's side: it starts jobs (following a task an earlier coordinator
started and that still runs, instead of starting it twice: ``DIR/launch/<job>.json`` records each
attempt), hands back each one as it ends, and sends a lost or interrupted one again at most
``retries`` times (it resumes from its checkpoint); a failed run is handed back, never sent again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from peftlab.lab import rundir
from peftlab.lab.child import Job, in_a_process

log = logging.getLogger(__name__)


class Launcher(Protocol):
    name: str
    capacity: Optional[int]  # jobs at once; None: as many as are ready (the engine queues them)
    poll_seconds: float
    dies_with_coordinator: bool  # its tasks end when this process does (local, Ray); SLURM's go on

    def submit(self, jobs: list[Job]) -> list[Any]: ...

    def poll(self, handle) -> bool: ...

    def outcome(self, handle) -> dict: ...

    def cancel(self, handle) -> None: ...

    def record(self, handle) -> Optional[dict]: ...

    def reattach(self, record: dict) -> Optional[Any]: ...

    def close(self) -> None: ...


def execute(job: Job, env: Optional[dict] = None) -> dict:
    """Run ``job``'s child process here (on a Ray worker, in a SLURM job); its outcome, the log and host."""
    if job.log is not None:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log, "a") as f:
            f.write(f"=== {job.name}: {socket.gethostname()} pid {os.getpid()}, {rundir.now()}\n")
    if job.run_dir is not None:
        _wait_while_owned(job)
    outcome = in_a_process(job.module, job.args, job.result, env=env, log=job.log)
    return {**outcome, "host": socket.gethostname(), **({"log": str(job.log)} if job.log else {})}


def _wait_while_owned(job: Job, every: float = 2.0) -> None:
    """A run directory owned by a live process (the task of a killed coordinator, still ending) is
    waited for: its run is then reused or resumed by the child, never trained twice at once."""
    from peftlab.files import holder

    said = False
    while (owner := holder(job.run_dir)) is not None:
        if not said and job.log is not None:
            with open(job.log, "a") as f:
                f.write(f"waiting for {owner.get('pid')} on {owner.get('host')}, which owns {job.run_dir}\n")
            said = True
        time.sleep(every)


class Dispatcher:
    """The coordinator's view of the jobs in flight through one launcher (see the module docstring)."""

    def __init__(self, launcher: Launcher, folder: Path, retries: int = 0):
        self.launcher, self.folder, self.retries = launcher, Path(folder), retries
        self.live: dict[int, tuple[Job, Any]] = {}  # serial -> (job, handle)
        self.attempts: dict[Any, int] = {}  # job key -> times sent by this coordinator
        self._serial = 0

    def __len__(self) -> int:
        return len(self.live)

    def start(self, jobs: list[Job]) -> None:
        """Follow each job's task if an earlier coordinator started it and it still runs; submit the others."""
        fresh = []
        for job in jobs:
            handle = self._reattached(job)
            if handle is None:
                fresh.append(job)
            else:
                self._add(job, handle)
        if fresh:
            for job, handle in zip(fresh, self.launcher.submit(fresh)):
                self.attempts[job.key] = self.attempts.get(job.key, 0) + 1
                self._note(job, {**(self.launcher.record(handle) or {}), "submitted": rundir.now()})
                self._add(job, handle)

    def ended(self) -> list[tuple[Job, dict]]:
        """Wait up to one poll interval; the jobs that ended since, with their outcomes. A task lost or
        interrupted from outside is submitted again (it resumes) while it has retries left."""
        deadline = time.monotonic() + self.launcher.poll_seconds
        while True:
            done = [s for s, (_, h) in self.live.items() if self.launcher.poll(h)]
            if done or time.monotonic() >= deadline:
                break
            time.sleep(min(0.2, self.launcher.poll_seconds))
        out, again = [], []
        for s in done:
            job, handle = self.live.pop(s)
            outcome = self.launcher.outcome(handle)
            self._note(job, {"ended": rundir.now(), "state": outcome.get("state"),
                             **({"lost": True} if outcome.get("lost") else {})}, update=True)
            if (outcome.get("lost") or outcome.get("state") == "interrupted") and \
                    self.attempts.get(job.key, 1) <= self.retries:
                log.warning("%s: %s; sending it again (it resumes from its checkpoint)", job.name,
                            outcome.get("error") or outcome.get("state"))
                again.append(job)
            else:
                out.append((job, outcome))
        if again:
            self.start(again)
        return out

    def stop(self) -> list[tuple[Job, dict]]:
        """The coordinator is stopping: tasks that die with it are stopped (each run records itself
        interrupted, with its checkpoint) and handed back; a cluster's jobs go on, to be followed by the
        next coordinator of the same directory."""
        if not self.live:
            return []
        if not self.launcher.dies_with_coordinator:
            names = ", ".join(job.name for job, _ in list(self.live.values())[:5])
            log.warning("%d %s jobs go on without this process (%s%s): the same command follows them again; "
                        "cancel them with the engine's own command", len(self.live), self.launcher.name, names,
                        ", ..." if len(self.live) > 5 else "")
            return []
        for _, handle in self.live.values():
            self.launcher.cancel(handle)
        out = []
        while self.live:
            for s in [s for s, (_, h) in self.live.items() if self.launcher.poll(h)]:
                job, handle = self.live.pop(s)
                outcome = self.launcher.outcome(handle)
                self._note(job, {"ended": rundir.now(), "state": outcome.get("state")}, update=True)
                out.append((job, outcome))
            time.sleep(0.1)
        return out

    def _add(self, job: Job, handle) -> None:
        self._serial += 1
        self.live[self._serial] = (job, handle)

    def _path(self, job: Job) -> Path:
        return self.folder / f"{job.name.replace('/', '--')}.json"

    def _note(self, job: Job, attempt: dict, update: bool = False) -> None:
        """Record an attempt (or the end of the last one) in ``DIR/launch/<job>.json``: nothing for a
        launcher whose tasks leave nothing to find again (local)."""
        path = self._path(job)
        try:
            attempts = json.loads(path.read_text())["attempts"]
        except (OSError, ValueError, KeyError):
            attempts = []
        if update and attempts:
            attempts[-1].update(attempt)
        elif not update and "engine" in attempt:
            attempts.append(attempt)
        else:
            return
        rundir.make_dir(self.folder, "--out")
        rundir.write_json(path, {"name": job.name, "attempts": attempts})

    def _reattached(self, job: Job):
        try:
            attempts = json.loads(self._path(job).read_text())["attempts"]
        except (OSError, ValueError, KeyError):
            return None
        last = attempts[-1] if attempts else {}
        if not last or "ended" in last:
            return None
        handle = self.launcher.reattach(last) if last.get("engine") == self.launcher.name else None
        if handle is None:  # it died with the coordinator that started it (or ended while none watched)
            self._note(job, {"ended": rundir.now(), "state": "gone"}, update=True)
            return None
        log.info("%s: following %s task %s, started by an earlier bench process", job.name, last["engine"],
                 last.get("id"))
        return handle


def run_all(launcher: Launcher, jobs: list[Job], done: Callable[[Job, dict], None], folder: Path,
            retries: int = 0) -> None:
    """Every job through ``launcher``, each once the jobs it comes ``after`` have ended, at most
    ``launcher.capacity`` at once; ``done(job, outcome)`` as each ends. On an interruption (SIGTERM,
    Ctrl-C) the tasks that die with this process are stopped and reported, then it re-raises."""
    dispatcher = Dispatcher(launcher, folder, retries)
    pending = {job.key for job in jobs}
    waiting = list(jobs)
    try:
        while waiting or dispatcher:
            ready = [j for j in waiting if not any(k in pending and k != j.key for k in j.after)]
            room = len(ready) if launcher.capacity is None else launcher.capacity - len(dispatcher)
            if ready[:room]:
                started = {id(j) for j in ready[:room]}
                dispatcher.start(ready[:room])
                waiting = [j for j in waiting if id(j) not in started]
            for job, outcome in dispatcher.ended():
                pending.discard(job.key)
                done(job, outcome)
    except BaseException:
        for job, outcome in dispatcher.stop():
            done(job, outcome)
        raise
