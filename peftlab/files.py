"""Files written so that a reader never sees half of one, and directories one process owns at a time.

Every JSON or text file is written to a temporary name and renamed. A directory is owned by one
process at a time: ``acquire`` takes ``.peftlab.lock`` (an ``flock`` held for as long as the
process owns the directory, with the owner's pid, host and command in the file for messages); a
lock whose owner died is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterator

from peftlab.errors import RunDirError

log = logging.getLogger(__name__)

LOCK = ".peftlab.lock"

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


def holder(directory: Path) -> dict | None:
    """The owner recorded in ``directory``'s lock while a live process holds it (else None), found
    without taking it: the lock file is neither made nor removed."""
    import fcntl

    try:
        fd = os.open(Path(directory) / LOCK, os.O_RDWR)
    except OSError:  # no lock file (or no directory): nobody owns it
        return None
    try:
        owner = _read_owner(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return owner or {}
        except OSError:  # no flock on this filesystem: the recorded pid decides
            return owner if owner and owner.get("pid") != os.getpid() and _alive(owner) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ------------------------------------------------------------------------- stopping and failing


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read a MiB at a time."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_safetensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file``, with its errors as ``OSError`` naming ``path`` (safetensors
    reports a full disk as a ``SafetensorError`` whose text carries the OS error code) and no half file
    left behind: every caller then says "no space left" with the path, as for any other write."""
    import errno
    import re

    import safetensors.torch as st
    from safetensors import SafetensorError

    try:
        st.save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        Path(path).unlink(missing_ok=True)
        found = re.search(r"code: (\d+)", str(e))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None
    except OSError:
        Path(path).unlink(missing_ok=True)
        raise

