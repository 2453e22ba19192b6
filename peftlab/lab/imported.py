"""``peftlab import-peft ADAPTER --out RUN``: an HF peft adapter as a peftlab run directory.

The adapter (``adapter_config.json`` + ``adapter_model.safetensors``) becomes the one peftlab method
whose ``MethodConfig.from_peft`` reads it (LoRA, IA3, prompt tuning: each method holds its own
mapping), applied to the base the adapter names (``base_model_name_or_path``; ``--set model.name=DIR``
where that base is elsewhere), its tensors copied in. Refused before anything is written: an adapter no
method reads, an option a method has no form for, tensors that do not fit the layers the method
selects. The run directory is then what a run writes once training is over (``config.yaml`` with
``train.max_steps: 0``, ``adapter/``, ``trained.json``, whose ``imported_from`` names the source) and
is scored like one (``peftlab.lab.run.resume_run``: test split, floors, ``metrics.json``): ``peftlab
eval``, ``--set`` evaluations and a bench's report read it as any finished run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from peftlab.errors import ConfigError, ModelError


def read_peft(adapter_dir: Path) -> tuple[dict, dict]:
    """``(adapter_config.json, tensors)`` of a peft adapter directory (safetensors only: peftlab unpickles
    nothing)."""
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise ModelError(f"{adapter_dir}: not a peft adapter (no adapter_config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ModelError(f"{config_file}: unreadable ({e})") from None
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        pickled = (adapter_dir / "adapter_model.bin").is_file()
        raise ModelError(f"{adapter_dir}: no adapter_model.safetensors beside adapter_config.json"
                         + ("; its adapter_model.bin is pickled, which peftlab never unpickles: save it again with "
                            "safe_serialization=True (peft's default)" if pickled else ""))
    from safetensors.torch import load_file

    return config, load_file(str(adapter_dir / "adapter_model.safetensors"))


def method_of(config: dict, tensors: dict, family):
    """``(MethodConfig, its tensors by peftlab parameter name)``: the first registered method whose
    ``from_peft`` reads the adapter."""
    from peftlab.methods.registry import get_method, method_names

    for name in method_names():
        found = get_method(name).from_peft(config, tensors, family)
        if found is not None:
            return found
    raise ModelError(f"import-peft: no peftlab method reads a peft {config.get('peft_type')!r} adapter"
                     + (" with use_dora" if config.get("use_dora") else "")
                     + "; those with an inverse of their export: lora, ia3, prompt_tuning")


def run_config(config: dict, overrides: Sequence[str]):
    """The imported run's config before its method: the adapter's base, nothing to train, ``--set``."""
    from peftlab.config import from_dict, parse_override, set_path
    from peftlab.schema import RunConfig

    base = config.get("base_model_name_or_path")
    data = {"model": {"name": base, **({"revision": config["revision"]} if config.get("revision") else {})},
            "train": {"max_steps": 0}, "data": {"task": {"name": "code2doc"}}}  # the default task, editable
    lines: dict = {}
    for text in overrides:
        key, value = parse_override(text)
        if key[0] in ("methods", "train"):
            raise ConfigError(f"import-peft --set {text}: the methods come from the adapter and nothing trains")
        data = set_path(data, key, value, text)
        lines[key] = f"--set {text!r}"
    if not data["model"].get("name"):
        raise ConfigError("import-peft: the adapter names no base_model_name_or_path; --set model.name=NAME")
    return from_dict(RunConfig, data, source="import-peft", lines=lines)


def import_peft(adapter_dir: Path, out: Path, *, overrides: Sequence[str] = (), progress: bool = True) -> dict:
    """Write the run directory ``out`` for the peft adapter in ``adapter_dir`` and score it; returns its
    metrics (see the module docstring)."""
    import torch

    from peftlab.lab.run import resume_run
    from peftlab.methods import apply_methods
    from peftlab.models.loading import load_model

    config, tensors = read_peft(adapter_dir)
    cfg = run_config(config, overrides)
    loaded = load_model(cfg.model, seed=cfg.train.seed)
    method, weights = method_of(config, tensors, loaded.family)
    cfg = dataclasses.replace(cfg, methods=[method])
    state = apply_methods(loaded.model, [method], loaded.family)
    params = dict(loaded.model.named_parameters())
    names = set(state.trainable_names())
    if names != set(weights):
        missing, extra = sorted(names - set(weights)), sorted(set(weights) - names)
        raise ModelError(f"import-peft: the adapter's tensors do not fit {method.describe()} on {cfg.model.name}: "
                         + (f"no tensor for {', '.join(missing[:3])}; " if missing else "")
                         + (f"no such parameter as {', '.join(extra[:3])}" if extra else ""))
    with torch.no_grad():
        for name, tensor in weights.items():
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise ModelError(f"import-peft: {name}: the adapter's tensor is {tuple(tensor.shape)}, the model's "
                                 f"parameter {tuple(params[name].shape)}")
            params[name].copy_(tensor.to(params[name].dtype))
    _write(cfg, Path(out), loaded, state, Path(adapter_dir), config)
    return resume_run(Path(out), progress=progress)  # training is over: scoring is what is left


def _write(cfg, out: Path, loaded, state, adapter_dir: Path, config: dict) -> None:
    """The run directory as a run leaves it once training is over (``trained.json``), written beside
    ``out`` and renamed into place whole: a directory without its adapter would resume as a run
    that trains nothing from fresh weights."""
    import shutil

    from peftlab.errors import RunDirError
    from peftlab.lab import fingerprint, rundir

    out = out.absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(f"{out}: already exists; choose another --out")
    rundir.make_dir(out.parent, "--out")
    tmp = out.with_name(f".{out.name}.import")
    shutil.rmtree(tmp, ignore_errors=True)  # a former import that died here: never a run
    cfg = fingerprint.resolve_paths(cfg)
    rundir.create(tmp)
    try:
        _fill(tmp, cfg, loaded, state, adapter_dir, config)
        rundir.release(tmp)
    except BaseException:
        rundir.release(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    tmp.rename(out)


def _fill(run: Path, cfg, loaded, state, adapter_dir: Path, config: dict) -> None:
    import yaml

    from peftlab.config import to_dict
    from peftlab.device import hardware
    from peftlab.lab import fingerprint, rundir
    from peftlab.lab.run import base_model_record
    from peftlab.methods.io import save_adapter
    from peftlab.provenance import versions

    d = cfg.data
    rundir.write_text(run / rundir.CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    fingerprint.record(run, d, (d.train_split, d.eval_split, d.test_split))
    save_adapter(loaded.model, run / rundir.ADAPTER, base_model_record(cfg))
    model, trainable = loaded.model, state.trainable_params(loaded.model)
    rundir.write_json(run / rundir.TRAINED, {
        "method": cfg.display_name(), "methods": [to_dict(m) for m in cfg.methods], "model": cfg.model.name,
        "model_init": cfg.model.init, "task": " + ".join(t.describe() for t in d.tasks),
        "trainable_params": trainable, "trainable_params_by_method": state.counts(model),
        "total_params": state.total_params, "trainable_pct": 100.0 * trainable / max(state.total_params, 1),
        "mixed_precision": cfg.train.mixed_precision, "steps": 0, "train_seconds": 0.0, "tokens": 0,
        "tokens_per_second": 0.0, "final_loss": None, "eval_loss": None, "stopped_by": "imported",
        "train_examples": 0, "imported_from": {"path": str(adapter_dir.resolve()), "peft_type": config.get("peft_type"),
                                               "base_model_name_or_path": config.get("base_model_name_or_path")},
        **hardware(), "versions": versions(),
    })
    rundir.set_status(run, "interrupted", error=None, imported=rundir.now())  # scoring is what is left
