"""Leaving peftlab: LoRA and IA3 adapters in HF peft's format, and merged plain ``transformers`` models.

``export_peft`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained(base, DIR)`` loads; ``merged_model`` folds LoRA and IA3 into the
base weights and unwraps them, leaving a model that ``save_pretrained`` writes and plain
``from_pretrained`` reads. Methods with no plain-HF form (the alignment adapter, bottleneck
adapters, virtual tokens) are refused by name, with the reason where there is one; methods that
change training only (S²-Attn) are left out: the trained model runs without them. A method with its
own peft form (prefix, prompt tuning, P-tuning, LLaMA-Adapter) exports through ``MethodConfig.to_peft``.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.ia3 import IA3Config, IA3Linear, _peft_targets, ia3_peft_form
from peftlab.methods.lora import LoraConfig, LoraLinear


# Why a method cannot be merged into a plain transformers model, where there is a reason to give.
_NO_MERGE = {
    "prompt_tuning": "its virtual tokens are extra inputs in front of the text, not a change to any weight",
    "p_tuning": "its virtual tokens are extra inputs in front of the text, not a change to any weight",
    "prefix": "its prefixes are extra keys and values in attention, not a change to any weight",
    "unipelt": "its LoRA, prefix and adapter are scaled by gates that depend on the input",
    "hyperformer": "its adapters' weights are generated per task by a hypernetwork",
}


def _peft_methods(model: nn.Module, what: str) -> list:
    from peftlab.methods.state import peft_state

    state = peft_state(model)
    if state is None:
        raise ModelError(f"{what}: no peftlab methods were applied to this model")
    others = [c.name for c in state.configs
              if c.name not in ("lora", "ia3", "full", "zero_shot") and not c.training_only()]
    if others:
        reasons = "".join(f"; {n}: {_NO_MERGE[n]}" for n in dict.fromkeys(others) if n in _NO_MERGE)
        raise ModelError(f"{what}: only LoRA, IA3 (and full fine-tuning) have a plain Hugging Face form; "
                         f"this model also has {', '.join(others)}{reasons}")
    return [c for c in state.configs if isinstance(c, (LoraConfig, IA3Config))]


def export_peft(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str,
                revision: str | None = None, spec=None) -> Path:
    """Write the model's adapter in HF peft's on-disk format: LoRA, IA3, or one method with ``to_peft``.

    ``base_model_name_or_path`` must load exactly the base the adapter was trained on (see
    ``exported_base``); with the run's ``spec`` (a ``ModelSpec``) a README.md says how to load it."""
    where = dict(revision=revision, spec=spec)
    own = _method_export(model)
    if own is not None:
        return _write(out_dir, model, base_model_name_or_path, *own, **where)
    configs = _peft_methods(model, "peft export")
    if len(configs) != 1:
        raise ModelError(f"peft export: needs exactly one LoRA or IA3 method, found {len(configs)}")
    (cfg,) = configs
    if isinstance(cfg, IA3Config):
        config, tensors = ia3_peft_form(model)
        return _write(out_dir, model, base_model_name_or_path, config, tensors, **where)
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}
    if any(m.merged for m in wrapped.values()):
        raise ModelError("peft export: unmerge LoRA first (the export holds A and B, not merged weights)")
    tensors = {}
    for name, m in wrapped.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = m.lora_a.detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = m.lora_b.detach().cpu().contiguous()
    config = {
        "peft_type": "LORA",
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.rslora,
        "target_modules": _peft_targets(model, set(wrapped)),  # exactly the wrapped layers
        "bias": "none",
        "fan_in_fan_out": any(m.fan_in_fan_out for m in wrapped.values()),  # GPT-2's Conv1D
        "init_lora_weights": True,
    }
    return _write(out_dir, model, base_model_name_or_path, config, tensors, **where)


def _write(out_dir, model: nn.Module, base_model_name_or_path: str, config: dict, tensors: dict, *,
           revision: str | None = None, spec=None) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {**config, "task_type": "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM",
              "base_model_name_or_path": base_model_name_or_path, "revision": revision, "inference_mode": True}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    if spec is not None:
        card = adapter_card(base_model_name_or_path, spec, model.config.is_encoder_decoder, revision,
                            kind=config.get("peft_type", "LORA"))
        (out / "README.md").write_text(card)
    return out


def exported_base(spec, seed: int, source: str, out_dir: Path) -> str:
    """The name an export gives its base: the model's directory or hub id when that loads the
    very base the run trained on; otherwise (``init: random``, ``model.config`` overrides) no name
    does, so the base is saved to ``out_dir/base`` (with its tokenizer) and that path is named."""
    import dataclasses

    from peftlab.models.loading import load_model

    if spec.init == "pretrained" and not spec.config:
        return source
    base = out_dir / "base"
    loaded = load_model(dataclasses.replace(spec, quantize="none"), seed=seed)  # the run's own base
    loaded.model.save_pretrained(str(base))
    loaded.tokenizer.save_pretrained(str(base))
    return str(base.resolve())


def adapter_card(base: str, spec, encoder_decoder: bool, revision: str | None = None, kind: str = "LORA") -> str:
    """README.md of an export: exactly how to load the base it belongs to, and the adapter."""
    auto = "AutoModelForSeq2SeqLM" if encoder_decoder else "AutoModelForCausalLM"
    rev = f", revision={revision!r}" if revision else ""
    quant = (f"\nThe adapter was trained on a {spec.quantize} quantization of this base (QLoRA); it is "
             f"exported for the full-precision base, as QLoRA adapters are.\n" if spec.quantize != "none" else "")
    return (f"# {kind} adapter in HF peft's format (exported by peftlab)\n\nBase model: `{base}` "
            f"(model.init: {spec.init}, dtype {spec.dtype}). Load it exactly so:\n\n"
            f"```python\nimport torch\nfrom peft import PeftModel\nfrom transformers import {auto}\n\n"
            f"base = {auto}.from_pretrained({base!r}, dtype=torch.{spec.dtype}{rev})\n"
            f"model = PeftModel.from_pretrained(base, \"<this directory>\")\n```\n{quant}")


def merged_model(model: nn.Module) -> nn.Module:
    """Fold every LoRA update and IA3 vector into its base weight; put the plain layers back
    (``nn.Linear``, or GPT-2's ``Conv1D``)."""
    from transformers.pytorch_utils import Conv1D

    from peftlab.methods.state import _ATTR
    from peftlab.methods.targets import replace_module

    _peft_methods(model, "merge")
    for name, m in list(model.named_modules()):
        if isinstance(m, (LoraLinear, IA3Linear)):
            m.merge()
            if m.fan_in_fan_out:
                linear = Conv1D(m.out_features, m.in_features)
            else:
                linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                                   device=m.weight.device, dtype=m.weight.dtype)
            linear.weight, linear.bias = m.weight, m.bias
            replace_module(model, name, linear)
    if hasattr(model, _ATTR):
        delattr(model, _ATTR)
    model.requires_grad_(True)
    return model


def _method_export(model: nn.Module) -> tuple[dict, dict] | None:
    """A method's own peft form (``MethodConfig.to_peft``), if the model has such a method."""
    from peftlab.methods.base import MethodConfig
    from peftlab.methods.state import peft_state
    from peftlab.models.arch import family_of

    state = peft_state(model)
    configs = [c for c in state.configs if not c.training_only()] if state is not None else []
    own = [c for c in configs if type(c).to_peft is not MethodConfig.to_peft]
    if not own:
        return None
    if len(configs) > 1:
        raise ModelError(f"peft export: a peft adapter holds one method; this model has "
                         f"{', '.join(c.name for c in configs)}")
    return own[0].to_peft(model, family_of(model))

