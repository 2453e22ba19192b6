"""Leaving peftlab: LoRA adapters in HF peft's format, and merged plain ``transformers`` models.

``export_peft`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained(base, DIR)`` loads; ``merged_model`` folds LoRA into the base
weights and unwraps it, leaving a model that ``save_pretrained`` writes and plain
``from_pretrained`` reads. Methods with no plain-HF form (the alignment adapter) are refused by name;
methods that change training only (S²-Attn) are left out: the trained model runs without them.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.lora import LoraConfig, LoraLinear


def _lora_only(model: nn.Module, what: str) -> list[LoraConfig]:
    from peftlab.methods.state import peft_state

    state = peft_state(model)
    if state is None:
        raise ModelError(f"{what}: no peftlab methods were applied to this model")
    others = [c.name for c in state.configs if c.name not in ("lora", "full", "zero_shot") and not c.training_only()]
    if others:
        raise ModelError(f"{what}: only LoRA (and full fine-tuning) have a plain Hugging Face form; "
                         f"this model also has {', '.join(others)}")
    return [c for c in state.configs if isinstance(c, LoraConfig)]


def export_peft(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str) -> Path:
    """Write the model's adapter in HF peft's on-disk format: LoRA, or one method with ``to_peft``."""
    from safetensors.torch import save_file

    own = _method_export(model)
    if own is not None:
        return _write(out_dir, *own, base_model_name_or_path)
    configs = _lora_only(model, "peft export")
    if len(configs) != 1:
        raise ModelError(f"peft export: needs exactly one LoRA method, found {len(configs)}")
    (cfg,) = configs
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}
    if any(m.merged for m in wrapped.values()):
        raise ModelError("peft export: unmerge LoRA first (the export holds A and B, not merged weights)")
    tensors = {}
    for name, m in wrapped.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = m.lora_a.detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = m.lora_b.detach().cpu().contiguous()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.rslora,
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in wrapped}),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def merged_model(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and put plain ``nn.Linear`` layers back."""
    from peftlab.methods.state import _ATTR
    from peftlab.methods.targets import replace_module

    _lora_only(model, "merge")
    for name, m in list(model.named_modules()):
        if isinstance(m, LoraLinear):
            m.merge()
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


def _write(out_dir, config: dict, tensors: dict, base_model_name_or_path: str) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {**config, "base_model_name_or_path": base_model_name_or_path, "inference_mode": True}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out
