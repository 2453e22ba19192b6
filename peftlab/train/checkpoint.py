"""Atomic, pickle-free training checkpoints: trainable weights, AdamW state, RNG and data position.

A checkpoint is a directory ``step-00000100/`` holding ``trainable.safetensors`` (weights by
parameter name), ``optimizer.safetensors`` (AdamW moments by parameter name) and ``state.json``
(step, data position, scheduler progress, RNG states, elapsed time). It is written into a
temporary sibling and renamed into place, so a crash never leaves a half checkpoint behind, and
older checkpoints are pruned only after the new one is complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

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


def _optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for key, value in st.items():
                name = f"{names[id(p)]}::{key}"
                if torch.is_tensor(value):
                    tensors[name] = value.detach().to("cpu").contiguous()
                else:
                    scalars[name] = value
    return tensors, scalars


def save_checkpoint(
    root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, keep: int = 2
) -> Path:
    """Write ``root/step-NNNNNNNN`` atomically and keep only the newest ``keep`` checkpoints."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    for stale in root.glob(".tmp-*"):  # left by a process killed mid-write; one writer per run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    save_file({n: p.detach().to("cpu").contiguous() for n, p in trainable.items()}, tmp / "trainable.safetensors")
    names = {id(p): n for n, p in trainable.items()}
    tensors, scalars = _optimizer_tensors(optimizer, names)
    save_file(tensors, tmp / "optimizer.safetensors")
    full_state = dict(state, step=step, rng=_rng_state(), optimizer_scalars=scalars)
    (tmp / "state.json").write_text(json.dumps(full_state))
    for f in tmp.iterdir():  # data reaches the disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never listed)."""
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: p.name)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore weights (and optimizer moments, RNG) from ``path``; returns the saved state dict."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unexpected = [n for n in weights if n not in params]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].dtype))
    if optimizer is not None:
        per_param: dict[str, dict] = {}
        items = list(load_file(path / "optimizer.safetensors").items()) + list(state.get("optimizer_scalars", {}).items())
        for key_full, value in items:
            pname, key = key_full.rsplit("::", 1)
            per_param.setdefault(pname, {})[key] = value.to(params[pname].device) if torch.is_tensor(value) else value
        names = {id(p): n for n, p in params.items()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if names[id(p)] in per_param:
                    optimizer.state[p] = per_param[names[id(p)]]
    _set_rng_state(state["rng"])
    return state
