"""PEFT methods: the registry, and applying any list of them to one model.

``apply_methods(model, [LoraConfig(...), AlignmentConfig(...)])`` freezes the model, injects each
method in order and makes exactly the methods' parameters trainable. Adding a method is one file
(its config dataclass + modules) and one line in ``peftlab.methods.registry``.
"""

from __future__ import annotations

from peftlab.methods.base import AdapterModule, MethodConfig
from peftlab.methods.registry import get_method, method_names
from peftlab.methods.state import PeftState, apply_methods, fold_methods, peft_state

__all__ = [
    "AdapterModule",
    "MethodConfig",
    "PeftState",
    "apply_methods",
    "fold_methods",
    "get_method",
    "method_names",
    "peft_state",
]
