"""The methods' registry: each method's name and where its config class lives (imported on first use).

Adding a method is one file (its config dataclass + modules) and one line in ``_REGISTRY``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peftlab.methods.base import MethodConfig

_REGISTRY = {
    "lora": "peftlab.methods.lora:LoraConfig",
    "alignment": "peftlab.methods.alignment:AlignmentConfig",
    "prompt_tuning": "peftlab.methods.prompt_tuning:PromptTuningConfig",
    "p_tuning": "peftlab.methods.p_tuning:PTuningConfig",
    "full": "peftlab.methods.full:FullFineTuneConfig",
    "zero_shot": "peftlab.methods.full:ZeroShotConfig",
    "houlsby": "peftlab.methods.houlsby:HoulsbyConfig",
    "pfeiffer": "peftlab.methods.pfeiffer:PfeifferConfig",
    "parallel": "peftlab.methods.parallel:ParallelAdapterConfig",
    "ia3": "peftlab.methods.ia3:IA3Config",
    "prefix": "peftlab.methods.prefix:PrefixConfig",
    "llama_adapter": "peftlab.methods.llama_adapter:LlamaAdapterConfig",
    "llama_adapter_v2": "peftlab.methods.llama_adapter_v2:LlamaAdapterV2Config",
    "s2_attn": "peftlab.methods.s2_attn:S2AttnConfig",
    "strided": "peftlab.methods.strided:StridedConfig",
    "hyperformer": "peftlab.methods.hyperformer:HyperFormerConfig",
    "unipelt": "peftlab.methods.unipelt:UniPELTConfig",
    "dora": "peftlab.methods.dora:DoraConfig",
    "vera": "peftlab.methods.vera:VeraConfig",
    "adalora": "peftlab.methods.adalora:AdaLoraConfig",
    "loha": "peftlab.methods.loha:LoHaConfig",
    "lokr": "peftlab.methods.lokr:LoKrConfig",
    "oft": "peftlab.methods.oft:OFTConfig",
    "bitfit": "peftlab.methods.bitfit:BitFitConfig",
    "ln_tuning": "peftlab.methods.ln_tuning:LNTuningConfig",
}


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> type[MethodConfig]:
    """The config class registered as ``name``; ``KeyError`` with the nearest name otherwise."""
    if name not in _REGISTRY:
        from peftlab.config import suggest

        raise KeyError(f"unknown method {name!r}{suggest(str(name), _REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
