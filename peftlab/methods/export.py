"""Leaving peftlab: LoRA adapters in HF peft's format, and merged plain ``transformers`` models.

``export_peft`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained(base, DIR)`` loads; ``merged_model`` folds LoRA into the base
weights and unwraps it, leaving a model that ``save_pretrained`` writes and plain
``from_pretrained`` reads. Methods with no plain-HF form (the alignment adapter) are refused by name.
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
    others = [c.name for c in state.configs if c.name not in ("lora", "full", "zero_shot")]
    if others:
        raise ModelError(f"{what}: only LoRA (and full fine-tuning) have a plain Hugging Face form; "
                         f"this model also has {', '.join(others)}")
    return [c for c in state.configs if isinstance(c, LoraConfig)]


def export_peft(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str,
                revision: str | None = None, spec=None) -> Path:
    """Write the model's LoRA adapter in HF peft's on-disk format.

    ``base_model_name_or_path`` must load exactly the base the adapter was trained on (see
    ``exported_base``); with the run's ``spec`` (a ``ModelSpec``) a README.md says how to load it."""
    from safetensors.torch import save_file

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
        "revision": revision,
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
    if spec is not None:
        card = adapter_card(base_model_name_or_path, spec, model.config.is_encoder_decoder, revision)
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


def adapter_card(base: str, spec, encoder_decoder: bool, revision: str | None = None) -> str:
    """README.md of an export: exactly how to load the base it belongs to, and the adapter."""
    auto = "AutoModelForSeq2SeqLM" if encoder_decoder else "AutoModelForCausalLM"
    rev = f", revision={revision!r}" if revision else ""
    quant = (f"\nThe adapter was trained on a {spec.quantize} quantization of this base (QLoRA); it is "
             f"exported for the full-precision base, as QLoRA adapters are.\n" if spec.quantize != "none" else "")
    return (f"# LoRA adapter (exported by peftlab)\n\nBase model: `{base}` "
            f"(model.init: {spec.init}, dtype {spec.dtype}). Load it exactly so:\n\n"
            f"```python\nimport torch\nfrom peft import PeftModel\nfrom transformers import {auto}\n\n"
            f"base = {auto}.from_pretrained({base!r}, dtype=torch.{spec.dtype}{rev})\n"
            f"model = PeftModel.from_pretrained(base, \"<this directory>\")\n```\n{quant}")


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
