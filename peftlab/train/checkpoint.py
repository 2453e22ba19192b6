"""Atomic, pickle-free training checkpoints: trainable weights, AdamW state, RNG and data position.

A checkpoint is a directory ``step-00000100/`` holding ``trainable.safetensors`` (weights by
parameter name), ``optimizer.safetensors`` (AdamW moments by parameter name) and ``state.json``
(step, data position, scheduler progress, RNG states, elapsed time, and the SHA-256 of the two
tensor files, checked when read back: a checkpoint changed in place is set aside, never resumed
from). It is written into a temporary sibling and renamed into place, so a crash never leaves a
half checkpoint behind, and older checkpoints are pruned only after the new one is complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from peftlab.errors import PeftlabError

_PREFIX = "step-"


def _rng_state() -> dict[str, Any]:
    state = {"python": _jsonable(random.getstate()), "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _jsonable(obj):
    if isinstance(obj, tuple):
        return [_jsonable(x) for x in obj]
    return obj


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def local_state(model: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """Trainable tensors and optimizer state by parameter name, from an unsharded model."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = {id(p): n for n, p in trainable.items()}
    per_param = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if optimizer.state.get(p):
                per_param[names[id(p)]] = dict(optimizer.state[p])
    return {n: p.detach() for n, p in trainable.items()}, per_param


def save_checkpoint(root: Path, step: int, weights: dict, per_param: dict, state: dict, keep: int = 2) -> Path:
    """Write ``root/step-NNNNNNNN`` atomically and keep only the newest ``keep`` checkpoints.

    ``weights``: trainable tensors by parameter name; ``per_param``: optimizer state by parameter
    name (tensors go to safetensors as ``name::key``, scalars to state.json).
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    for stale in root.glob(".tmp-*"):  # left by a process killed mid-write; one writer per run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        _write(tmp, step, weights, per_param, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:  # a full disk: free what the half checkpoint took; the older ones stay
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, step: int, weights: dict, per_param: dict, state: dict) -> None:
    from peftlab.files import save_safetensors

    save_safetensors({n: t.detach().to("cpu").contiguous() for n, t in weights.items()}, tmp / "trainable.safetensors")
    tensors, scalars = {}, {}
    for pname, st in per_param.items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pname}::{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{pname}::{key}"] = value
    save_safetensors(tensors, tmp / "optimizer.safetensors")
    from peftlab.files import sha256_file

    digests = {name: sha256_file(tmp / name) for name in TENSOR_FILES}
    full_state = dict(state, step=step, rng=_rng_state(), optimizer_scalars=scalars, sha256=digests)
    (tmp / "state.json").write_text(json.dumps(full_state))
    for f in tmp.iterdir():  # data reaches the disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never listed)."""
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: p.name)


class DamagedCheckpoint(PeftlabError):
    """A checkpoint file that does not read back whole (truncated, overwritten, non-finite)."""


TENSOR_FILES = ("trainable.safetensors", "optimizer.safetensors")


def read_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    """``(state, weights, optimizer state per parameter name)`` as saved; no model needed.

    Raises ``DamagedCheckpoint`` naming the file when one does not read back whole, or when its bytes
    are not those written (the SHA-256 in state.json; checkpoints from before it was kept are not checked)."""
    from peftlab.files import sha256_file
    from peftlab.methods.io import read_safetensors

    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise DamagedCheckpoint(f"{path / 'state.json'}: damaged checkpoint file ({e})") from None
    weights = read_safetensors(path / "trainable.safetensors", DamagedCheckpoint)
    optim = read_safetensors(path / "optimizer.safetensors", DamagedCheckpoint)
    for name, digest in (state.get("sha256") or {}).items():  # whole files whose bytes changed in place
        found = sha256_file(path / name)
        if found != digest:
            raise DamagedCheckpoint(f"{path / name}: its bytes are not the ones written (SHA-256 {found[:12]}…, "
                                    f"recorded {digest[:12]}…)")
    per_param: dict[str, dict] = {}
    items = list(optim.items()) + list(state.get("optimizer_scalars", {}).items())
    for key_full, value in items:
        pname, key = key_full.rsplit("::", 1)
        per_param.setdefault(pname, {})[key] = value
    return state, weights, per_param


_intact: set = set()  # (checkpoint, mtime) already read back whole by this process


def set_aside_damaged(root: Path) -> list[Path]:
    """The complete checkpoints under ``root``, oldest first, after renaming any damaged ones at
    the newest end to ``damaged-step-…`` (kept for inspection, never resumed from)."""
    import logging

    while True:
        ckpts = list_checkpoints(root)
        if not ckpts:
            return ckpts
        newest = ckpts[-1]
        try:
            key = (str(newest), (newest / "state.json").stat().st_mtime_ns)
            if key in _intact:
                return ckpts
            read_checkpoint(newest)
        except FileNotFoundError:  # another process (data parallel) set it aside first
            continue
        except DamagedCheckpoint as e:
            aside = newest.with_name(f"damaged-{newest.name}")
            if aside.exists():  # set aside once before (a resume of a resume)
                aside = newest.with_name(f"damaged-{newest.name}-{os.getpid()}-{int(time.time())}")
            try:
                os.replace(newest, aside)
            except FileNotFoundError:
                continue
            logging.getLogger(__name__).warning("%s; set aside as %s, resuming from the one before", e, aside.name)
            continue
        _intact.add(key)
        return ckpts


def check_fits(path: Path, weights: dict, model: torch.nn.Module) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unexpected = [n for n in weights if n not in params]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def restore_rng(state: dict) -> None:
    _set_rng_state(state["rng"])


def copy_into(model: torch.nn.Module, weights: dict) -> None:
    """Copy tensors by parameter name into ``model`` (cast to each parameter's dtype)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].dtype))


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore weights (and optimizer moments, RNG) of an unsharded model; returns the saved state."""
    state, weights, per_param = read_checkpoint(path)
    check_fits(path, weights, model)
    copy_into(model, weights)
    params = dict(model.named_parameters())
    if optimizer is not None:
        names = {id(p): n for n, p in params.items()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                st = per_param.get(names[id(p)])
                if st is not None:
                    optimizer.state[p] = {k: v.to(p.device) if torch.is_tensor(v) else v for k, v in st.items()}
    restore_rng(state)
    return state
