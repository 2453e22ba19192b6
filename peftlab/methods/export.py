"""Leaving peftlab: LoRA and IA3 adapters in HF peft's format, and merged plain ``transformers`` models.

``export_peft`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained(base, DIR)`` loads; ``merged_model`` folds LoRA and IA3 into the
base weights and unwraps them, leaving a model that ``save_pretrained`` writes and plain
``from_pretrained`` reads. Methods with no plain-HF form (the alignment adapter, bottleneck
adapters) are refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.ia3 import IA3Config, IA3Linear, _peft_targets, ia3_peft_form
from peftlab.methods.lora import LoraConfig, LoraLinear


def _peft_methods(model: nn.Module, what: str) -> list:
    from peftlab.methods.state import peft_state

    state = peft_state(model)
    if state is None:
        raise ModelError(f"{what}: no peftlab methods were applied to this model")
    others = [c.name for c in state.configs if c.name not in ("lora", "ia3", "full", "zero_shot")]
    if others:
        raise ModelError(f"{what}: only LoRA, IA3 (and full fine-tuning) have a plain Hugging Face form; "
                         f"this model also has {', '.join(others)}")
    return [c for c in state.configs if isinstance(c, (LoraConfig, IA3Config))]


def export_peft(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str) -> Path:
    """Write the model's LoRA or IA3 adapter in HF peft's on-disk format."""
    configs = _peft_methods(model, "peft export")
    if len(configs) != 1:
        raise ModelError(f"peft export: needs exactly one LoRA or IA3 method, found {len(configs)}")
    (cfg,) = configs
    if isinstance(cfg, IA3Config):
        config, tensors = ia3_peft_form(model)
        return _write(out_dir, model, base_model_name_or_path, config, tensors)
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
    return _write(out_dir, model, base_model_name_or_path, config, tensors)


def _write(out_dir, model: nn.Module, base_model_name_or_path: str, config: dict, tensors: dict) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {**config, "task_type": "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM",
              "base_model_name_or_path": base_model_name_or_path, "inference_mode": True}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


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
