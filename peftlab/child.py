"""One run in a fresh Python process that dies with this one: how ``peftlab bench`` and
``peftlab compare`` give every run its own process, so that its peak memory (RSS) is its own and
a run the kernel kills for memory is recorded as failed instead of ending the study.

``in_a_process(module, args, result)`` runs ``python -m MODULE *ARGS RESULT``; the child writes its
outcome as JSON to ``RESULT`` (``write_outcome``), which is returned. SIGTERM or Ctrl-C here is
passed on, so the run records itself as interrupted before this process stops.
"""

from __future__ import annotations

import json
from pathlib import Path


def in_a_process(module: str, args: list[str], result: Path) -> dict:
    """The child's outcome dict, or ``{"state": "failed", "error": ...}`` saying how it died."""
    import signal
    import subprocess
    import sys

    result.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", module, *args, str(result)], preexec_fn=_die_with_parent)
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


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))
    except (OSError, AttributeError):  # not Linux: the child outlives a killed parent
        pass
