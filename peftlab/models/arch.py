"""Architecture tables: where each model family keeps its attention, FFN and blocks.

Methods never hard-code module names; they ask the family table. Adding a family is one small file
with one ``Family(...)`` entry (see ``t5.py``, ``llama.py``) and one line in ``FAMILIES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peftlab.errors import ModelError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # HF ``config.model_type`` values this table covers
    kind: Literal["seq2seq", "causal"]
    # Role -> leaf module name of the nn.Linear inside a block (q/k/v/o, ffn_in/ffn_gate/ffn_out).
    linear_roles: dict[str, tuple[str, ...]]
    # Dotted paths of the block lists, per stack.
    stacks: dict[str, str]
    encoder: str | None  # dotted path of the encoder module (seq2seq only)
    hidden_size: str  # config attribute with the model width
    num_heads: str
    default_lora_targets: tuple[str, ...]
    # Config keys that make a tiny random model of this family for tests.
    tiny_config: dict = field(default_factory=dict)

    def leaf_names(self, role: str) -> tuple[str, ...]:
        return self.linear_roles.get(role, ())


def _families() -> dict[str, Family]:
    from peftlab.models.llama import LLAMA
    from peftlab.models.t5 import T5

    return {f.name: f for f in (T5, LLAMA)}


def family_of(model_or_config) -> Family:
    """The family table for a HF model (or its config), by ``config.model_type``."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for fam in _families().values():
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in _families().values() for t in f.model_types)
    raise ModelError(f"model type {model_type!r} has no peftlab architecture table (supported: {', '.join(known)})")


def get_family(name: str) -> Family:
    fams = _families()
    if name not in fams:
        raise ModelError(f"unknown model family {name!r} (known: {', '.join(sorted(fams))})")
    return fams[name]
