"""Saving and loading the trainable part of a model: safetensors weights plus a JSON manifest.

``save_adapter`` writes only the parameters the applied methods train (for full fine-tuning, that
is every weight) and the frozen tensors they declare (``AdapterModule.adapter_buffers``: values a
fresh base cannot give back exactly, as PiSSA's initial factors), the method configs, and each tensor's shape and the weights file's SHA-256;
``load_adapter`` applies the same methods to a fresh base model and loads the weights, refusing an
adapter that was saved for another base model, and a damaged one (truncated, overwritten,
non-finite values) with the name of the damaged file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from peftlab.errors import ModelError
from peftlab.files import save_safetensors, sha256_file

WEIGHTS = "peftlab_adapter.safetensors"
MANIFEST = "peftlab_adapter.json"
FORMAT_VERSION = 1


def save_adapter(model: nn.Module, out_dir: str | Path, base_model: dict[str, Any], *, fold: bool = False) -> Path:
    """Write ``out_dir/{peftlab_adapter.safetensors, peftlab_adapter.json}`` (atomic renames).

    ``fold``: first fold training-time parametrisations into their inference form, in place
    (``state.fold_methods``: prefix tuning's MLP into plain prefixes; same outputs, smaller file).
    The end of a run wants it; a checkpoint that training resumes from does not."""

    from peftlab.config import to_dict
    from peftlab.methods.state import adapter_buffers, fold_methods, peft_state

    if fold and peft_state(model) is not None:
        fold_methods(model)
    state = peft_state(model)
    if state is None:
        raise ModelError("save_adapter: no peftlab methods were applied to this model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    tensors = {n: params[n].detach().to("cpu").contiguous() for n in state.trainable_names()}
    buffers = adapter_buffers(model)  # frozen tensors a fresh base cannot give back (PiSSA's A0, B0)
    tensors.update({n: b.detach().to("cpu").contiguous() for n, b in buffers.items()})
    manifest = {
        "format_version": FORMAT_VERSION,
        "methods": [to_dict(c) for c in state.configs],
        "param_names": state.param_names,
        **({"buffers": sorted(buffers)} if buffers else {}),
        "trainable_params": state.counts(model),
        **({"trainable_params_per_task": per_task} if (per_task := state.per_task(model)) else {}),
        "base_model": base_model,
        "shapes": {n: list(t.shape) for n, t in tensors.items()},  # checked on load, with the SHA-256
    }
    tmp = out_dir / f".{WEIGHTS}.tmp"
    try:
        save_safetensors(tensors, tmp, metadata={"format": "pt", "producer": "peftlab"})
        manifest["sha256"] = sha256_file(tmp)
        os.replace(tmp, out_dir / WEIGHTS)
        tmp = out_dir / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, out_dir / MANIFEST)
    except BaseException:  # a full disk: no half-written temp file left behind
        tmp.unlink(missing_ok=True)
        raise
    return out_dir



def read_safetensors(path: Path, error: type[Exception] = ModelError) -> dict:
    """Every tensor of a safetensors file, or ``error`` naming the file when it does not read
    back whole: missing, truncated, a bad header, or non-finite values (NaN/inf)."""
    import torch
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except FileNotFoundError:
        raise error(f"{path}: missing") from None
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError, ValueError)
        raise error(f"{path}: damaged file, it does not read back ({str(e).splitlines()[0]})") from None
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise error(f"{path}: damaged file, {len(bad)} tensor(s) hold NaN/inf values ({', '.join(bad[:3])})")
    return tensors


def read_manifest(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: no peftlab adapter here") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}:{e.lineno}: adapter manifest is not valid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: cannot read the adapter manifest ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("methods"), list):
        raise ModelError(f"{path}: not a peftlab adapter manifest (no 'methods' list); damaged or foreign")
    return manifest


def check_base(saved: dict, current: dict, where: str) -> None:
    """Refuse to load an adapter onto a base model other than the one it was trained on."""
    keys = ("name", "init", "config")
    if any(saved.get(k) != current.get(k) for k in keys):
        def ident(b):
            return f"{b.get('name')} (init={b.get('init')}, config={b.get('config') or {}})"

        raise ModelError(f"{where}: adapter was saved for base model {ident(saved)}, not {ident(current)}")
    from peftlab.models.identity import fingerprint_differences

    diffs = fingerprint_differences(saved.get("weights") or {}, current.get("weights") or {})
    if diffs:
        hint = (f"set model.revision to the commit it recorded ({saved['weights']['commit']})"
                if "commit" in saved["weights"] else "restore those weights")
        raise ModelError(f"{where}: base model {saved.get('name')} is not the weights this adapter was trained on "
                         f"({'; '.join(diffs)}); an adapter is a correction to one set of weights: {hint}, "
                         f"or train again")


def load_adapter(model: nn.Module, adapter_dir: str | Path, base_model: dict | None = None):
    """Apply the saved methods to ``model`` (a fresh base) and load their weights exactly."""
    import torch

    from peftlab.methods.state import adapter_buffers, apply_methods

    adapter_dir = Path(adapter_dir)
    manifest = read_manifest(adapter_dir)
    if base_model is not None:
        check_base(manifest.get("base_model", {}), base_model, str(adapter_dir / MANIFEST))
    configs = [_method_from_dict(m, adapter_dir) for m in manifest["methods"]]
    weights = _read_weights(adapter_dir, manifest)
    state = apply_methods(model, configs)
    params = {**dict(model.named_parameters()), **adapter_buffers(model)}
    expected = set(state.trainable_names()) | set(adapter_buffers(model))
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ModelError(f"{adapter_dir / WEIGHTS}: weights do not match the methods (missing {missing[:3]}, extra {extra[:3]})")
    with torch.no_grad():
        for n, t in weights.items():
            if params[n].shape != t.shape:
                raise ModelError(f"{adapter_dir / WEIGHTS}: {n} has shape {tuple(t.shape)}, model has {tuple(params[n].shape)}")
            params[n].copy_(t)
    return state


def _read_weights(adapter_dir: Path, manifest: dict) -> dict:
    """The adapter's tensors, checked against what the manifest recorded when they were saved."""
    path = adapter_dir / WEIGHTS
    advice = "; the adapter cannot be used: retrain it, or restore the run directory from a copy"
    try:
        weights = read_safetensors(path)
    except ModelError as e:
        raise ModelError(f"{e}{advice}") from None
    for name, shape in manifest.get("shapes", {}).items():
        if name in weights and list(weights[name].shape) != shape:
            raise ModelError(f"{path}: damaged file, {name} has shape {list(weights[name].shape)} where "
                             f"{MANIFEST} recorded {shape}{advice}")
    want = manifest.get("sha256")  # older adapters have none; their damage shows only as above
    if want is not None and sha256_file(path) != want:
        raise ModelError(f"{path}: damaged file, its SHA-256 differs from the one {MANIFEST} recorded "
                         f"(overwritten since it was saved){advice}")
    return weights


def with_legacy_defaults(data):
    """A method's config as saved (a manifest's, a run's ``config.yaml``), with each field the save
    predates set to what it was trained with (``MethodConfig.legacy_defaults``), not today's default."""
    from peftlab.methods.registry import get_method, method_names

    if isinstance(data, dict) and data.get("name") in method_names():
        return {**get_method(data["name"]).legacy_defaults, **data}
    return data


def _method_from_dict(data: dict, adapter_dir: Path):
    from peftlab.config import from_dict
    from peftlab.methods.base import MethodConfig

    return from_dict(MethodConfig, with_legacy_defaults(data), source=str(adapter_dir / MANIFEST))
