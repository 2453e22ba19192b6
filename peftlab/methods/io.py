"""Saving and loading the trainable part of a model: safetensors weights plus a JSON manifest.

``save_adapter`` writes only the parameters the applied methods train (for full fine-tuning, that
is every weight) and the method configs; ``load_adapter`` applies the same methods to a fresh
base model and loads the weights, refusing an adapter that was saved for another base model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from peftlab.errors import ModelError

WEIGHTS = "peftlab_adapter.safetensors"
MANIFEST = "peftlab_adapter.json"
FORMAT_VERSION = 1


def save_adapter(model: nn.Module, out_dir: str | Path, base_model: dict[str, Any], *, fold: bool = False) -> Path:
    """Write ``out_dir/{peftlab_adapter.safetensors, peftlab_adapter.json}`` (atomic renames).

    ``fold``: first fold training-time parametrisations into their inference form, in place
    (``state.fold_methods``: prefix tuning's MLP into plain prefixes; same outputs, smaller file).
    The end of a run wants it; a checkpoint that training resumes from does not."""
    from safetensors.torch import save_file

    from peftlab.config import to_dict
    from peftlab.methods.state import fold_methods, peft_state

    if fold and peft_state(model) is not None:
        fold_methods(model)
    state = peft_state(model)
    if state is None:
        raise ModelError("save_adapter: no peftlab methods were applied to this model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    tensors = {n: params[n].detach().to("cpu").contiguous() for n in state.trainable_names()}
    manifest = {
        "format_version": FORMAT_VERSION,
        "methods": [to_dict(c) for c in state.configs],
        "param_names": state.param_names,
        "trainable_params": state.counts(model),
        "base_model": base_model,
    }
    tmp = out_dir / f".{WEIGHTS}.tmp"
    save_file(tensors, tmp, metadata={"format": "pt", "producer": "peftlab"})
    os.replace(tmp, out_dir / WEIGHTS)
    tmp = out_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out_dir / MANIFEST)
    return out_dir


def read_manifest(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: no peftlab adapter here") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}:{e.lineno}: adapter manifest is not valid JSON: {e.msg}") from None


def check_base(saved: dict, current: dict, where: str) -> None:
    """Refuse to load an adapter onto a base model other than the one it was trained on."""
    keys = ("name", "init", "config")
    if any(saved.get(k) != current.get(k) for k in keys):
        def ident(b):
            return f"{b.get('name')} (init={b.get('init')}, config={b.get('config') or {}})"

        raise ModelError(f"{where}: adapter was saved for base model {ident(saved)}, not {ident(current)}")


def load_adapter(model: nn.Module, adapter_dir: str | Path, base_model: dict | None = None):
    """Apply the saved methods to ``model`` (a fresh base) and load their weights exactly."""
    import torch
    from safetensors.torch import load_file

    from peftlab.methods.state import apply_methods

    adapter_dir = Path(adapter_dir)
    manifest = read_manifest(adapter_dir)
    if base_model is not None:
        check_base(manifest.get("base_model", {}), base_model, str(adapter_dir / MANIFEST))
    configs = [_method_from_dict(m, adapter_dir) for m in manifest["methods"]]
    state = apply_methods(model, configs)
    weights = load_file(adapter_dir / WEIGHTS)
    expected = set(state.trainable_names())
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ModelError(f"{adapter_dir / WEIGHTS}: weights do not match the methods (missing {missing[:3]}, extra {extra[:3]})")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in weights.items():
            if params[n].shape != t.shape:
                raise ModelError(f"{adapter_dir / WEIGHTS}: {n} has shape {tuple(t.shape)}, model has {tuple(params[n].shape)}")
            params[n].copy_(t)
    return state


def _method_from_dict(data: dict, adapter_dir: Path):
    from peftlab.config import from_dict
    from peftlab.methods.base import MethodConfig

    return from_dict(MethodConfig, data, source=str(adapter_dir / MANIFEST))
