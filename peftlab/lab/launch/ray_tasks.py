"""``launcher: ray``: each job a Ray task with the CPUs and GPUs of ``ray:``, on the cluster
``ray.address`` names (or a Ray started on this machine), running ``execute``: the job's child
process on the node Ray chose, its output in ``DIR/launch/<run>.log``.

Ray ends a driver's tasks when the driver dies, and the child process dies with its task's worker:
a bench killed mid-way leaves its runs interrupted at their checkpoints, and the same command resumes
them (Ray's own retries are off: a lost task is sent again by the coordinator, at most ``retries``
times).
"""

from __future__ import annotations

import logging

from peftlab.lab.child import Job
from peftlab.lab.launch.base import execute
from peftlab.lab.launch.spec import RaySpec, engine

log = logging.getLogger(__name__)


class RayLauncher:
    name = "ray"
    capacity = None  # Ray queues the tasks until their resources are free
    poll_seconds = 1.0
    dies_with_coordinator = True

    def __init__(self, spec: RaySpec):
        self.ray = engine("ray")
        self.started = not self.ray.is_initialized()  # a Ray this process connected to is left as it was
        if self.started:
            self.ray.init(address=spec.address, include_dashboard=False, log_to_driver=False)
        resources = self.ray.cluster_resources()
        if resources.get("CPU", 0) < spec.cpus or resources.get("GPU", 0) < spec.gpus:
            log.warning("ray: each run asks for %g CPUs and %g GPUs; the cluster has %g and %g now (runs wait "
                        "until a node that has them joins)", spec.cpus, spec.gpus, resources.get("CPU", 0),
                        resources.get("GPU", 0))
        threads = str(max(1, int(spec.cpus)))
        self.env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        self.remote = self.ray.remote(num_cpus=spec.cpus, num_gpus=spec.gpus, max_retries=0)(execute)

    def submit(self, jobs: list[Job]) -> list:
        return [self.remote.options(name=job.name or "peftlab").remote(job, self.env) for job in jobs]

    def poll(self, ref) -> bool:
        ready, _ = self.ray.wait([ref], timeout=0, fetch_local=False)
        return bool(ready)

    def outcome(self, ref) -> dict:
        errors = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except errors.TaskCancelledError:
            return {"state": "interrupted", "error": "stopped with the bench (its Ray task was cancelled)"}
        except errors.RayTaskError as e:  # execute itself raised: an error of this set-up, not of a node
            return {"state": "failed", "error": f"the Ray task raised: {_gist(e)}"}
        except errors.RayError as e:  # its worker or node died
            return {"state": "failed", "lost": True, "error": f"the Ray task was lost: {_gist(e)}"}

    def cancel(self, ref) -> None:
        self.ray.cancel(ref)  # KeyboardInterrupt in the task: its child process is sent SIGTERM

    def record(self, ref) -> dict:
        return {"engine": self.name, "id": ref.task_id().hex()}

    def reattach(self, record: dict) -> None:
        return None  # a task ends with the driver that started it: the run directory says what is left

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _gist(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__
