"""``launcher: slurm``: each job a SLURM job through submitit (``sbatch`` with the partition, time,
CPUs, GPUs and memory of ``slurm:``; the runs ready together as one job array with ``array: true``),
running ``execute``: the job's child process, its output in ``DIR/launch/<run>.log`` (submitit's own
files in ``DIR/launch/slurm/<job id>/``).

SLURM's jobs outlive the coordinator: each job id is recorded in ``DIR/launch/<run>.json`` as it is
submitted, and a restarted bench follows the jobs still queued or running instead of submitting them
again. ``cluster: local`` uses submitit's local executor: the same jobs as processes of this machine,
which also outlive the coordinator (how the tests run it without a cluster).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from peftlab.errors import ConfigError
from peftlab.lab.child import Job
from peftlab.lab.launch.base import execute
from peftlab.lab.launch.spec import SlurmSpec, engine

log = logging.getLogger(__name__)


class SlurmLauncher:
    name = "slurm"
    capacity = None  # SLURM queues them
    dies_with_coordinator = False

    def __init__(self, spec: SlurmSpec, folder: Path):
        self.submitit = engine("slurm")
        self.spec, self.local = spec, spec.cluster == "local"
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None] if not self.local else []
        if missing:
            raise ConfigError(f"launcher: slurm: no {missing[0]} on this machine: start the bench where jobs are "
                              f"submitted (a login node), or set slurm.cluster: local to run the jobs here")
        self.folder = str(Path(folder).resolve() / "slurm" / "%j")
        self.poll_seconds = 1.0 if self.local else 15.0
        self.executor = self.submitit.AutoExecutor(folder=self.folder, cluster="local" if self.local else "slurm")
        params = {"timeout_min": spec.time, "gpus_per_node": spec.gpus, "cpus_per_task": spec.cpus, "nodes": 1,
                  "tasks_per_node": 1, "name": "peftlab"}
        if spec.mem_gb:
            params["mem_gb"] = spec.mem_gb
        if spec.setup:
            params["local_setup" if self.local else "slurm_setup"] = list(spec.setup)
        if not self.local:
            params.update({"slurm_partition": spec.partition} if spec.partition else {})
            params.update({"slurm_array_parallelism": spec.parallel} if spec.parallel else {})
            params.update({"slurm_additional_parameters": dict(spec.options)} if spec.options else {})
        self.executor.update_parameters(**params)
        self.env = {"OMP_NUM_THREADS": str(spec.cpus), "MKL_NUM_THREADS": str(spec.cpus)}
        self.followed: set = set()  # local jobs found again after a restart (no process handle: polled by pid)

    def submit(self, jobs: list[Job]) -> list:
        if self.spec.array and len(jobs) > 1:
            with self.executor.batch():
                handles = [self.executor.submit(execute, job, self.env) for job in jobs]
        else:
            handles = [self.executor.submit(execute, job, self.env) for job in jobs]
        log.info("slurm: submitted %s", ", ".join(f"{j.name} (job {h.job_id})" for j, h in zip(jobs, handles)))
        return handles

    def poll(self, job) -> bool:
        if job.job_id in self.followed:  # submitit cannot tell a local job it did not start from a dead one
            return job.paths.result_pickle.exists() or not _alive(job.job_id)
        return job.done()

    def outcome(self, job) -> dict:
        try:
            return job.result()
        except Exception as e:  # noqa: BLE001 - submitit's UncompletedJobError / FailedJobError: no outcome
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            return {"state": "failed", "lost": True, "log": str(job.paths.stderr),
                    "error": f"SLURM job {job.job_id} ended without an outcome ({lines[0] if lines else e})"}

    def cancel(self, job) -> None:
        job.cancel(check=False)

    def record(self, job) -> dict:
        return {"engine": self.name, "id": job.job_id, "cluster": self.spec.cluster}

    def reattach(self, record: dict):
        """The job of an earlier coordinator while it is still queued or running, else None."""
        if record.get("cluster") != self.spec.cluster:
            return None
        if self.local:
            job = self.submitit.LocalJob(folder=self.folder, job_id=str(record["id"]))
            if job.paths.result_pickle.exists() or not _alive(job.job_id):
                return None
            self.followed.add(job.job_id)
            return job
        job = self.submitit.SlurmJob(folder=self.folder, job_id=str(record["id"]))
        return None if job.done(force_check=True) else job

    def close(self) -> None:
        pass


def _alive(pid: str) -> bool:
    """A process of this machine runs (a zombie nobody reaped has ended)."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
