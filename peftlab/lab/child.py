"""One run in a fresh Python process that dies with this one: how ``peftlab bench`` and
``peftlab compare`` give every run its own process, so that its peak memory (RSS) is its own and
a run the kernel kills for memory is recorded as failed instead of ending the study.

``in_a_process(module, args, result)`` runs ``python -m MODULE *ARGS RESULT``; the child writes its
outcome as JSON to ``RESULT`` (``child_main``), which is returned. SIGTERM or Ctrl-C here is
passed on, so the run records itself as interrupted before this process stops. A ``Job`` says what
to run that way; where it runs is a launcher's choice (``peftlab.lab.launch``): this machine, several
at once, each worker slot with its own share (``worker_slots``: ``cores // workers`` CPU threads, and
on a machine with as many GPUs as workers, one GPU each), or a Ray or SLURM cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional


def in_a_process(module: str, args: list[str], result: Path, env: Optional[dict] = None,
                 log: Optional[Path] = None, started: Optional[Callable] = None) -> dict:
    """The child's outcome dict, or ``{"state": "failed", "error": ...}`` saying how it died.
    ``env``: variables set for the child on top of this process's environment; ``log``: a file its
    output is appended to (None: this process's); ``started(proc)``: told the child's ``Popen``."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys

    result.unlink(missing_ok=True)
    with open(log, "ab") if log else contextlib.nullcontext() as out:
        proc = subprocess.Popen([sys.executable, "-m", module, *args, str(result)], preexec_fn=_die_with_parent,
                                env={**os.environ, **env} if env else None, stdout=out,
                                stderr=subprocess.STDOUT if out else None)
    if started is not None:
        started(proc)
    try:
        code = proc.wait()
    except BaseException:  # interrupted: let the run record it, then stop
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise
    try:
        return json.loads(result.read_text())
    except (OSError, ValueError):
        how = (f"was killed by signal {-code}" + (" (SIGKILL: out of memory?)" if -code == signal.SIGKILL else "")
               if code < 0 else f"exited with status {code}")
        return {"state": "failed", "error": f"the run's process {how} before it finished"}
    finally:
        result.unlink(missing_ok=True)


@dataclass(frozen=True)
class Job:
    key: object  # the caller's handle (e.g. the run's index)
    module: str
    args: list
    result: Path
    name: str = ""  # what messages call it: a bench run's directory (code2doc/lora/seed0), a trial's
    log: Optional[Path] = None  # its output, appended (None: the terminal of the process that starts it)
    run_dir: Optional[Path] = None  # the run directory it writes (a launched job waits while another owns it)
    after: tuple = ()  # keys of the jobs that must end before it starts (a pair's tuning runs)


def worker_slots(workers: int) -> list[dict]:
    """The environment of each worker slot: its CPU threads (``cores // workers``, at least 1) and,
    where the machine has at least ``workers`` GPUs, its own GPU. One slot: no change."""
    if workers <= 1:
        return [{}]
    import torch

    from peftlab.errors import ConfigError

    threads = str(max(1, torch.get_num_threads() // workers))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if 0 < gpus < workers:
        raise ConfigError(f"workers: {workers} runs side by side need {workers} GPUs, this machine has {gpus}")
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
             **({"CUDA_VISIBLE_DEVICES": str(i)} if gpus else {})} for i in range(workers)]


def child_main(result: str, progress: str, work: Callable[[bool], dict]) -> int:
    """The child's end: quiet logs (and no progress bars unless ``progress == "1"``), then
    ``work(progress)`` with SIGTERM as an interruption; its outcome — or ``interrupted``, or
    ``failed`` with the error of a bad run — written to ``result``. The exit status: 130 when
    interrupted, else 0 (a failed run is an outcome, not a crash of the child)."""
    from peftlab.lab import rundir
    from peftlab.lab.env import configure_logging
    from peftlab.errors import PeftlabError

    configure_logging()
    if progress != "1":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        with rundir.stop_on_signals():
            outcome = work(progress == "1")
    except KeyboardInterrupt as e:  # recorded in the run's status by the run itself
        outcome = {"state": "interrupted", "error": str(e) or "interrupted"}
    except PeftlabError as e:
        outcome = {"state": "failed", "error": str(e)}
    except (RuntimeError, ValueError, OSError) as e:  # e.g. out of memory: recorded, the study goes on
        outcome = {"state": "failed", "error": f"{type(e).__name__}: {e}"}
    rundir.write_json(Path(result), outcome)
    return 130 if outcome["state"] == "interrupted" else 0


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))
    except (OSError, AttributeError):  # not Linux: the child outlives a killed parent
        pass
