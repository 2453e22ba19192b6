"""Leaving peftlab: LoRA adapters in HF peft's format, and merged plain ``transformers`` models.

``export_peft`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained(base, DIR)`` loads; ``merged_model`` folds LoRA into the base
weights and unwraps it, leaving a model that ``save_pretrained`` writes and plain
``from_pretrained`` reads. Methods with no plain-HF form (the alignment adapter) are refused by name.

Prompt tuning and P-tuning export too (peft's ``prompt_embeddings``: the n virtual tokens, P-tuning's
encoder already applied, which is what peft itself saves), but cannot merge: see ``_NO_MERGE``.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.lora import LoraConfig, LoraLinear


# Why a method cannot be merged into a plain transformers model, where there is a reason to give.
_NO_MERGE = {
    "prompt_tuning": "its virtual tokens are extra inputs in front of the text, not a change to any weight",
    "p_tuning": "its virtual tokens are extra inputs in front of the text, not a change to any weight",
}
# Methods that export to peft on their own (one peft adapter holds one method).
_PEFT_TYPES = {"prompt_tuning": "PROMPT_TUNING", "p_tuning": "P_TUNING"}


def _lora_only(model: nn.Module, what: str) -> list[LoraConfig]:
    from peftlab.methods.state import peft_state

    state = peft_state(model)
    if state is None:
        raise ModelError(f"{what}: no peftlab methods were applied to this model")
    others = [c.name for c in state.configs if c.name not in ("lora", "full", "zero_shot")]
    if others:
        reasons = "".join(f"; {n}: {_NO_MERGE[n]}" for n in dict.fromkeys(others) if n in _NO_MERGE)
        raise ModelError(f"{what}: only LoRA (and full fine-tuning) have a plain Hugging Face form; "
                         f"this model also has {', '.join(others)}{reasons}")
    return [c for c in state.configs if isinstance(c, LoraConfig)]


def export_peft(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str) -> Path:
    """Write the model's adapter in HF peft's on-disk format (LoRA, prompt tuning or P-tuning)."""
    from safetensors.torch import save_file

    from peftlab.methods.state import peft_state

    state = peft_state(model)
    if state is not None and any(c.name in _PEFT_TYPES for c in state.configs):
        return _export_virtual_tokens(model, state, Path(out_dir), base_model_name_or_path)
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


def _export_virtual_tokens(model: nn.Module, state, out: Path, base_model_name_or_path: str) -> Path:
    """peft's prompt-learning format: ``prompt_embeddings`` (n, d) and a config that puts them in
    front of the encoder (T5) or decoder (causal) input only (``num_transformer_submodules: 1``)."""
    from safetensors.torch import save_file

    from peftlab.methods import virtual_tokens

    names = [c.name for c in state.configs if c.name not in ("zero_shot",)]
    if len(names) != 1:
        raise ModelError(f"peft export: a peft adapter holds one method; this model has {', '.join(names)} "
                         f"(export each method from a run that trains it alone)")
    (cfg,) = [c for c in state.configs if c.name in _PEFT_TYPES]
    prompts = virtual_tokens.find(model).eval_prompts().cpu().contiguous()  # (n, d)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"prompt_embeddings": prompts}, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": _PEFT_TYPES[cfg.name],
        "task_type": "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "num_virtual_tokens": prompts.shape[0],
        "token_dim": prompts.shape[1],
        "num_transformer_submodules": 1,
        "inference_mode": True,
    }
    if cfg.name == "prompt_tuning":
        config["prompt_tuning_init"] = "RANDOM"  # peft re-initialises nothing in inference mode
    else:
        config.update(encoder_reparameterization_type=cfg.encoder.upper(), encoder_num_layers=cfg.lstm_layers,
                      encoder_hidden_size=cfg.hidden or prompts.shape[1], encoder_dropout=cfg.dropout)
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
