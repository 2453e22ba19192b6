"""Where a bench's runs (or a search's trials) run: the spec fields shared by ``peftlab bench`` and
``peftlab search``, and the check that the chosen engine is installed.

``launcher: local`` (the default) runs each run's process on this machine; ``launcher: ray`` makes
each a Ray task, with the resources of ``ray:``; ``launcher: slurm`` a SLURM job through submitit,
with the partition, time and GPUs of ``slurm:``. Neither engine is a dependency of peftlab: each is
an extra (``pip install 'peftlab[ray]'``, ``'peftlab[slurm]'``), imported only when chosen.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from peftlab.config import FieldError

LAUNCHERS = ("local", "ray", "slurm")
Launcher = Literal["local", "ray", "slurm"]
ENGINES = {"ray": "ray", "slurm": "submitit"}  # launcher -> the module its extra installs
# what chooses where runs run, never what they train: left out of the plan digests, so a bench or a
# search started on one launcher may be continued on another
LAUNCH_FIELDS = ("launcher", "ray", "slurm", "parallel")


@dataclass(frozen=True)
class RaySpec:
    # the cluster ray.init connects to ("auto", "ray://head:10001", "head:6379"); None: $RAY_ADDRESS if
    # set, else a Ray started on this machine for the bench (and stopped with it)
    address: Optional[str] = None
    cpus: float = 1  # CPUs each run reserves; its process trains on that many torch threads
    gpus: float = 0  # GPUs each run reserves (Ray sets CUDA_VISIBLE_DEVICES for it)
    # a run whose task was lost (its node or worker died) or stopped from outside is sent again this many
    # times, resuming from its checkpoint; a run that fails (an error of the run) is never sent again
    retries: int = 1

    def __post_init__(self):
        if not self.cpus > 0:
            raise FieldError("cpus", f"must be > 0, got {self.cpus}")
        if self.gpus < 0:
            raise FieldError("gpus", f"must be >= 0, got {self.gpus}")
        if self.retries < 0:
            raise FieldError("retries", f"must be >= 0, got {self.retries}")


@dataclass(frozen=True)
class SlurmSpec:
    partition: Optional[str] = None  # --partition (None: the cluster's default)
    time: int = 60  # minutes each run's job may take (--time); a run stopped by it resumes in the next job
    gpus: int = 0  # GPUs per run (--gpus-per-node)
    cpus: int = 4  # CPUs per run (--cpus-per-task); its process trains on that many torch threads
    mem_gb: Optional[float] = None  # memory per run (--mem; None: the partition's default)
    array: bool = False  # the runs ready together go as one job array (one sbatch) instead of a job each
    parallel: Optional[int] = None  # at most this many jobs of an array at once (--array=...%N)
    setup: list[str] = field(default_factory=list)  # shell lines each job runs first (module load ...)
    # more sbatch options, e.g. {account: nlp, qos: high, constraint: a100} (submitit's additional parameters)
    options: dict[str, Any] = field(default_factory=dict)
    cluster: Literal["slurm", "local"] = "slurm"  # local: submitit's local executor (jobs on this machine)
    retries: int = 1  # as ray.retries: a job lost (node failure, time limit) is sent again this many times

    def __post_init__(self):
        for name in ("time", "cpus"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.gpus < 0 or self.retries < 0:
            raise FieldError("gpus" if self.gpus < 0 else "retries", "must be >= 0")
        if self.parallel is not None and self.parallel < 1:
            raise FieldError("parallel", f"must be >= 1 or null, got {self.parallel}")


def check_launch(spec) -> None:
    """A bench's or search's launcher is installed, and runs each run in a process of its own."""
    if spec.launcher != "local" and not getattr(spec, "isolate", True):
        raise FieldError("isolate", f"launcher: {spec.launcher} runs every run in a process of its own: "
                                    f"drop isolate: false")
    module = ENGINES.get(spec.launcher)
    if module and importlib.util.find_spec(module) is None:
        raise FieldError("launcher", f"{spec.launcher} needs {module}, which is not installed here: "
                                     f"pip install 'peftlab[{spec.launcher}]'")


def engine(launcher: str):
    """The engine's module, imported now (``ray`` or ``submitit``), or a one-line error saying which
    extra to install."""
    import importlib

    from peftlab.errors import ConfigError

    try:
        return importlib.import_module(ENGINES[launcher])
    except ImportError as e:
        raise ConfigError(f"launcher: {launcher} needs {ENGINES[launcher]} ({e}): "
                          f"pip install 'peftlab[{launcher}]'") from None
