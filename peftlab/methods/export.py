"""Leaving peftlab: adapters in HF peft's format, and merged plain ``transformers`` models.

``export_peft`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained(base, DIR)`` loads, from the one method the model holds: its
``MethodConfig.to_peft`` gives peft's form (LoRA, IA3, prefix, prompt tuning, P-tuning,
LLaMA-Adapter). ``merged_model`` folds every method into the base weights through its own
``MethodConfig.merge_into_base`` (LoRA, IA3; full fine-tuning and zero-shot have nothing to fold),
leaving a model that ``save_pretrained`` writes and plain ``from_pretrained`` reads; a method that
cannot be folded is refused by name with its ``cannot_merge`` reason, before anything changes.
Methods that change training only (S²-Attn) are left out of both: the trained model runs without them.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from peftlab.errors import ModelError
from peftlab.files import save_safetensors


def _applied(model: nn.Module, what: str) -> list:
    """The methods applied to ``model`` that the trained model runs with."""
    from peftlab.methods.state import peft_state

    state = peft_state(model)
    if state is None:
        raise ModelError(f"{what}: no peftlab methods were applied to this model")
    return [c for c in state.configs if not c.training_only()]


def _family(model: nn.Module):
    """The family the model's methods were applied through (a table, or the one inferred)."""
    from peftlab.methods.state import peft_state
    from peftlab.models.arch import family_for

    return getattr(peft_state(model), "family", None) or family_for(model)


def peft_form(model: nn.Module) -> tuple[dict, dict]:
    """``(adapter_config fields, adapter tensors)`` of the model's one method in HF peft's format,
    through its ``to_peft``; ``ModelError`` with the reason when there is none (nothing written)."""
    configs = [c for c in _applied(model, "peft export") if c.adds_modules]
    if not configs:
        raise ModelError("peft export: this model has no adapter (full fine-tuning or zero-shot); "
                         "`peftlab merge` writes it as a plain transformers model")
    if len(configs) > 1:
        raise ModelError(f"peft export: a peft adapter holds one method; this model has "
                         f"{', '.join(c.name for c in configs)}")
    (cfg,) = configs
    form = cfg.to_peft(model, _family(model))
    if form is None:
        raise ModelError(f"peft export: HF peft has no form of {cfg.name} ({cfg.describe()})")
    return form


def export_peft(model: nn.Module, out_dir: str | Path, base_model_name_or_path: str,
                revision: str | None = None, spec=None, form: tuple[dict, dict] | None = None) -> Path:
    """Write the model's adapter in HF peft's on-disk format (``peft_form``, or ``form`` if given).

    ``base_model_name_or_path`` must load exactly the base the adapter was trained on (see
    ``exported_base``); with the run's ``spec`` (a ``ModelSpec``) a README.md says how to load it."""
    return _write(out_dir, model, base_model_name_or_path, *(form or peft_form(model)), revision=revision, spec=spec,
                  kind=_family(model).kind)


def _write(out_dir, model: nn.Module, base_model_name_or_path: str, config: dict, tensors: dict, *,
           revision: str | None = None, spec=None, kind: str = "causal") -> Path:

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    # an encoder (BERT) has no peft task type of its own here: peft then loads a plain PeftModel
    task_type = "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM" if kind == "causal" else None
    config = {**config, "task_type": task_type,
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
    return (card_metadata(base, kind, encoder_decoder)
            + f"# {kind} adapter in HF peft's format (exported by peftlab)\n\nBase model: `{base}` "
            f"(model.init: {spec.init}, dtype {spec.dtype}). Load it exactly so:\n\n"
            f"```python\nimport torch\nfrom peft import PeftModel\nfrom transformers import {auto}\n\n"
            f"base = {auto}.from_pretrained({base!r}, dtype=torch.{spec.dtype}{rev})\n"
            f"model = PeftModel.from_pretrained(base, \"<this directory>\")\n```\n{quant}")


def card_metadata(base: str, kind: str, encoder_decoder: bool) -> str:
    """The card's YAML front matter, what the Hub reads: ``library_name: peft``, the ``base_model``
    (a Hub id only: a local directory means nothing there), tags and the pipeline."""
    import re

    import yaml

    hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", base) is not None and not Path(base).exists()
    meta = {"library_name": "peft", **({"base_model": base} if hub_id else {}),
            "tags": ["peftlab", kind.lower().replace("_", "-"), *([f"base_model:adapter:{base}"] if hub_id else [])],
            "pipeline_tag": "text2text-generation" if encoder_decoder else "text-generation"}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def merged_model(model: nn.Module) -> nn.Module:
    """Fold every method into the base weights (each by its own ``merge_into_base``) and put the plain
    layers back (``nn.Linear``, or GPT-2's ``Conv1D``). Refuses, before changing anything, when some
    method cannot be folded, naming each with its reason."""
    from peftlab.methods.state import forget_methods

    configs = _applied(model, "merge")
    refused = {c.name: c.cannot_merge for c in configs if c.cannot_merge is not None}
    if refused:
        merging = [c.name for c in configs if c.cannot_merge is None and c.adds_modules]
        has = f"this model has {', '.join(merging)} and also has " if merging else "this model has "
        raise ModelError(f"merge: only methods that change weights fold into a plain transformers model; "
                         f"{has}{', '.join(refused)} ("
                         + "; ".join(f"{name}: {why}" for name, why in refused.items()) + ")")
    family = _family(model)
    for c in configs:
        c.merge_into_base(model, family)
    forget_methods(model)
    model.requires_grad_(True)
    return model
