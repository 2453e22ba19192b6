"""``launcher: local``: each job a child process on this machine (``peftlab.lab.child``), up to
``workers`` at once, each worker slot with its share of the cores (or its own GPU): ``worker_slots``.
The children die with this process; a rerun resumes their runs from the run directories."""

from __future__ import annotations

import threading
from typing import Optional

from peftlab.lab.child import Job, in_a_process, worker_slots


class _Task:
    def __init__(self, job: Job):
        self.job = job
        self.proc = None
        self.stopping = False
        self.result: Optional[dict] = None
        self.lock = threading.Lock()


class LocalLauncher:
    name = "local"
    poll_seconds = 0.2
    dies_with_coordinator = True

    def __init__(self, workers: int = 1):
        self.slots = worker_slots(workers)
        self.capacity = len(self.slots)
        self._free = list(self.slots)
        self._lock = threading.Lock()

    def submit(self, jobs: list[Job]) -> list[_Task]:
        tasks = []
        for job in jobs:
            with self._lock:
                if not self._free:
                    raise RuntimeError(f"local launcher: {job.name} submitted with no worker slot free")
                slot = self._free.pop(0)
            task = _Task(job)
            threading.Thread(target=self._run, args=(task, slot), daemon=True).start()
            tasks.append(task)
        return tasks

    def _run(self, task: _Task, slot: dict) -> None:
        def started(proc) -> None:
            with task.lock:
                task.proc = proc
                if task.stopping:  # cancelled while it was starting
                    proc.terminate()

        job = task.job
        try:
            result = in_a_process(job.module, job.args, job.result, env=slot, log=job.log, started=started)
        except BaseException as e:  # noqa: BLE001 - the job's outcome, not this thread's crash
            result = {"state": "failed", "error": f"{type(e).__name__}: {e}"}
        with self._lock:  # the slot is free before the job is seen to end: the next one may take it
            self._free.append(slot)
        task.result = result

    def poll(self, task: _Task) -> bool:
        return task.result is not None

    def outcome(self, task: _Task) -> dict:
        return task.result

    def cancel(self, task: _Task) -> None:
        """SIGTERM: the run records itself interrupted, keeping its checkpoint."""
        with task.lock:
            task.stopping = True
            if task.proc is not None and task.proc.poll() is None:
                task.proc.terminate()

    def record(self, task: _Task) -> None:
        return None  # the process dies with this one: nothing to find again

    def reattach(self, record: dict) -> None:
        return None

    def close(self) -> None:
        pass
