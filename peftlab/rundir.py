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
import datetime as _dt
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from peftlab.errors import RunDirError

CONFIG = "config.yaml"
STATUS = "status.json"
METRICS = "metrics.json"
TRAIN_LOG = "train_log.jsonl"
PREDICTIONS = "predictions.jsonl"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
TRAINED = "trained.json"  # training's own results, written once the adapter is saved whole
LOCK = ".peftlab.lock"

log = logging.getLogger(__name__)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # a full disk leaves the old file whole, and no half-written temp file
        tmp.unlink(missing_ok=True)
        raise


def make_dir(path: Path, what: str) -> None:
    """``mkdir -p`` with one-line errors (a file in the way, no permission, a read-only disk)."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: is a file, not a directory; choose another {what}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"{path}: cannot create the directory ({e.strerror}); choose another {what}") from None


def create(run_dir: Path) -> Path:
    """Make a fresh run directory and own it (``acquire``); refuse to reuse one that holds
    anything (never clobber results)."""
    make_dir(run_dir, "--out")
    acquire(run_dir)
    if any(p.name != LOCK for p in run_dir.iterdir()):
        release(run_dir)
        state = read_status(run_dir).get("state", "unknown") if (run_dir / STATUS).exists() else "not a run"
        raise RunDirError(f"{run_dir}: already exists ({state}); choose another --out or remove it")
    set_status(run_dir, "running", started=now())
    return run_dir


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


def set_status(run_dir: Path, state: str, **extra) -> None:
    data = read_status(run_dir) if (run_dir / STATUS).exists() else {}
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

_held: dict[str, list] = {}  # resolved directory -> [fd, depth]: this process's locks (re-entrant)


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": now(),
            "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:3]]) if sys.argv else "python"}


def _who(owner: dict) -> str:
    if not owner:
        return "another process"
    return (f"pid {owner.get('pid')} on {owner.get('host')} "
            f"({owner.get('command', '?')}, since {owner.get('since', '?')})")


def _read_owner(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _alive(owner: dict) -> bool:
    """Whether the recorded owner may still run (only decidable on this host)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner.get("pid", 0)), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return int(owner.get("pid", 0)) > 0


def acquire(directory: Path) -> None:
    """Own ``directory`` for this process, or raise ``RunDirError`` naming the live owner.

    The lock is an ``flock`` on ``.peftlab.lock``, released by the kernel when its process dies,
    so a lock left by a killed run is taken over (with a warning); where ``flock`` is not
    supported, the recorded pid is checked instead (same host only)."""
    import fcntl

    key = str(Path(directory).resolve())
    if key in _held:
        _held[key][1] += 1
        return
    path = Path(directory) / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"{directory}: cannot write here ({e.strerror}); a run directory must be "
                              f"writable: copy it somewhere writable or choose another --out") from None
        previous = _read_owner(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(f"{directory}: in use by {_who(previous)}; wait for it to finish, stop it, or "
                              f"choose another directory (two processes would write the same files)") from None
        except OSError:  # no flock on this filesystem: trust the recorded pid
            if previous and previous.get("pid") != os.getpid() and _alive(previous):
                os.close(fd)
                raise RunDirError(f"{directory}: in use by {_who(previous)}; wait for it to finish or stop "
                                  f"it (if it is gone, delete {path})") from None
        try:  # the owner may have released (unlinked) the file between our open and flock: retry
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    if previous and previous.get("pid") != os.getpid():
        log.warning("%s: taking over the lock of %s, which is no longer running", directory, _who(previous))
    data = json.dumps(_owner()).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    _held[key] = [fd, 1]


def release(directory: Path) -> None:
    """Give up ``directory`` (the lock file goes; a no-op for a directory this process does not own)."""
    key = str(Path(directory).resolve())
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[key]
    fd = entry[0]
    try:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(Path(directory) / LOCK).st_ino:
                os.unlink(Path(directory) / LOCK)
    finally:
        os.close(fd)


@contextlib.contextmanager
def owned(directory: Path) -> Iterator[None]:
    acquire(directory)
    try:
        yield
    finally:
        release(directory)


# ------------------------------------------------------------------------- stopping and failing


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
    error = f"{type(exc).__name__}: {exc}" if state == "failed" else f"interrupted ({exc or 'SIGINT'})"
    try:
        set_status(run_dir, state, error=error, finished=now(), last_checkpoint=str(ckpt) if ckpt else None,
                   resume=resume)
    except OSError as e:  # the disk that failed the run may fail this too: say so, keep the first error
        log.error("%s: could not record %r in %s (%s)", run_dir, state, STATUS, e.strerror)
    if isinstance(exc, KeyboardInterrupt):
        out = Interrupted(f"{run_dir} stopped by {exc or 'SIGINT'}; {after}: {resume}",
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
    return json.loads((run_dir / METRICS).read_text())
