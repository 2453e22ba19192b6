"""Where the runs of a bench (and the trials of a search) run: ``launcher: local | ray | slurm``.

The bench process stays the coordinator (it plans, submits, follows, writes ``bench.json`` and the
report); a launcher only decides where each run's child process (``python -m peftlab.lab.bench.run``,
``peftlab.lab.child``) runs and how its outcome comes back: the protocol and the coordinator's loop
are ``peftlab.lab.launch.base``, one file per engine (``local``, ``ray_tasks``, ``slurm_jobs``), the
spec fields ``peftlab.lab.launch.spec``. Ray and submitit are imported only when chosen.
"""

from __future__ import annotations

from pathlib import Path


def launcher_for(spec, workers: int, folder: Path):
    """The launcher a bench or search spec asks for (``spec.launcher``, ``spec.ray``, ``spec.slurm``);
    ``workers``: the local launcher's processes at once. ``folder``: where launched jobs keep their
    records and logs (``DIR/launch``)."""
    if spec.launcher == "ray":
        from peftlab.lab.launch.ray_tasks import RayLauncher

        return RayLauncher(spec.ray)
    if spec.launcher == "slurm":
        from peftlab.lab.launch.slurm_jobs import SlurmLauncher

        return SlurmLauncher(spec.slurm, folder)
    from peftlab.lab.launch.local import LocalLauncher

    return LocalLauncher(workers)


def retries_of(spec) -> int:
    """How many times a lost or interrupted task is sent again (0 on this machine: what stops a local
    run is this process stopping)."""
    return {"ray": spec.ray.retries, "slurm": spec.slurm.retries}.get(spec.launcher, 0)
