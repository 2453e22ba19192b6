"""The Hugging Face hub, asked once and briefly: offline mode honoured, an unreachable hub said once.

Left to itself, ``huggingface_hub`` retries a refused connection with back-off (about 25 s) for
every file before transformers reports it, and says little about ``HF_HUB_OFFLINE``. So before a
hub id is loaded, ``hub_kwargs`` decides where it comes from:

* ``HF_HUB_OFFLINE`` set: the local cache only; a model not there is one clear error;
* the hub answers a single short request: a normal download (or cache check);
* it does not: the cached copy, with one warning, or one clear error when there is none.
"""

from __future__ import annotations

import logging
import os
import time

from peftlab.errors import ModelError

log = logging.getLogger(__name__)
_PROBES: dict[str, tuple[float, str | None]] = {}  # endpoint -> (when, None if reachable else why)
_PROBE_TTL = 60.0  # seconds a probe's answer is reused (a bench loads many models)


def probe_timeout() -> float:
    """Seconds to wait for the hub: ``HF_HUB_ETAG_TIMEOUT`` when set, else 5."""
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 5)
    except ValueError:
        return 5.0


def unreachable(endpoint: str) -> str | None:
    """None when ``endpoint`` answers one HEAD request (any status) in time; else the reason."""
    seen = _PROBES.get(endpoint)
    if seen is not None and time.monotonic() - seen[0] < _PROBE_TTL:
        return seen[1]
    from huggingface_hub import get_session

    why = None
    try:  # the hub's own session: the user's proxy settings apply
        get_session().head(endpoint, timeout=probe_timeout(), follow_redirects=False)
    except Exception as e:  # any failure to get an answer: refused, timed out, DNS, TLS, proxy
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no answer'}"
    _PROBES[endpoint] = (time.monotonic(), why)
    return why


def _cached(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), as huggingface_hub read it at import or as
    the environment says now."""
    from huggingface_hub import constants

    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or now.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_kwargs(repo_id: str, revision: str | None = None, what: str = "model") -> dict:
    """Extra ``from_pretrained`` keywords for a hub id (``local_files_only`` when it must come from
    the cache), or ``ModelError`` when it can come from nowhere."""
    from huggingface_hub import constants

    if offline():
        if not _cached(repo_id, revision):
            raise ModelError(f"could not load {what} {repo_id!r}: HF_HUB_OFFLINE is set and it is not in the "
                             f"local cache ({constants.HF_HUB_CACHE}); unset HF_HUB_OFFLINE to download it, or "
                             f"give a local directory")
        return {"local_files_only": True}
    why = unreachable(constants.ENDPOINT)
    if why is None:
        return {}
    if _cached(repo_id, revision):
        log.warning("the hub (%s) cannot be reached (%s): using the cached copy of %r",
                    constants.ENDPOINT, why, repo_id)
        return {"local_files_only": True}
    raise ModelError(f"could not load {what} {repo_id!r}: the hub ({constants.ENDPOINT}) cannot be reached ({why}) "
                     f"and the model is not in the local cache; check the network or HF_ENDPOINT, or give a "
                     f"local directory (HF_HUB_OFFLINE=1 works from the cache alone)")
