"""Architecture tables: where each model family keeps its attention, FFN and blocks.

Methods never hard-code module names; they ask the family table. Adding a family is one small file
with one ``Family(...)`` entry (see ``t5.py``, ``llama.py``) and one name in ``_families``. A model
whose type has no table gets the family ``generic.py`` infers from the model itself (``family_for``):
its stacks of blocks and nothing else, enough for the methods that work from layers named in their
config (LoRA, IA3, bottleneck adapters given their branches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peftlab.errors import ModelError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # HF ``config.model_type`` values this table covers
    kind: Literal["seq2seq", "causal", "encoder"]  # encoder: no generation (BERT), generic families only
    # Role -> leaf module name of the linear layer (nn.Linear or Conv1D) inside a block
    # (q/k/v/o, ffn_in/ffn_gate/ffn_out); a leaf may be dotted ("mlp.c_proj") where names repeat.
    linear_roles: dict[str, tuple[str, ...]]
    # Dotted paths of the block lists, per stack.
    stacks: dict[str, str]
    encoder: str | None  # dotted path of the encoder module (seq2seq only)
    hidden_size: str  # config attribute with the model width
    num_heads: str
    default_lora_targets: tuple[str, ...]
    # Sub-layer modules inside a block, by leaf name (hook points 2 and 3 of docs/design.md):
    # attention kind ("self", "cross") -> leaf name of the attention module (it owns q/k/v/o),
    attention: dict[str, str] = field(default_factory=dict)
    # the FFN module's leaf name (its forward maps the normed hidden state to the FFN output),
    ffn: str = ""
    # leaf names of the norms inside a block (before each sub-layer), and dotted paths of the
    # stacks' final norms
    norms: tuple[str, ...] = ()
    final_norms: tuple[str, ...] = ()
    embeddings: str = ""  # dotted path of the input embedding module (shared by T5's stacks)
    # Residual branches (bottleneck adapters): per sub-layer kind, leaf names of two siblings of
    # the sub-layer inside its parent: the norm that reads the residual stream h entering the
    # branch, and the module whose output is the branch added back to h ("" = the sub-layer).
    pre_norms: dict[str, str] = field(default_factory=dict)
    branch_outputs: dict[str, str] = field(default_factory=dict)
    lm_head: str = ""  # dotted path of the output projection onto the vocabulary
    # Attention geometry (hook point 3): config attributes with the number of key/value heads
    # ("" = num_heads: no grouped-query attention) and the per-head width, and the dotted path of
    # the rotary position embedding module ("" = the family has no RoPE).
    num_kv_heads: str = ""
    head_dim: str = ""
    rotary: str = ""
    decoder: str | None = None  # dotted path of the decoder stack (seq2seq only)
    # Roles computed inside one fused layer (GPT-2: q, k, v -> "c_attn"): targeting such a role
    # alone is refused with the fused layer named.
    fused_roles: dict[str, str] = field(default_factory=dict)
    # Config keys that make a tiny random model of this family for tests.
    tiny_config: dict = field(default_factory=dict)
    # False for a family inferred from a model without a table (``peftlab.models.generic``): it knows
    # the stacks only, and methods that need more (``MethodConfig.needs_table``) are refused.
    table: bool = True

    def kv_heads(self, config) -> int:
        return getattr(config, self.num_kv_heads or self.num_heads)

    def head_size(self, config) -> int:
        d = getattr(config, self.head_dim, None) if self.head_dim else None
        return d or getattr(config, self.hidden_size) // getattr(config, self.num_heads)

    def leaf_names(self, role: str) -> tuple[str, ...]:
        return self.linear_roles.get(role, ())

    def blocks(self, model, stacks=None) -> list[tuple[str, int, "object"]]:
        """``(stack, index, block)`` for every transformer block, bottom to top per stack."""
        out = []
        for stack, path in self.stacks.items():
            if stacks is None or stack in stacks:
                out += [(stack, i, b) for i, b in enumerate(model.get_submodule(path))]
        return out

    def sublayers(self, block, kind: str) -> list[tuple[str, "object"]]:
        """``(dotted name inside block, module)`` of a block's attention modules of ``kind``
        ("self"/"cross"), or of its FFN (``kind="ffn"``); [] where the block has none."""
        leaf = self.ffn if kind == "ffn" else self.attention.get(kind)
        if not leaf:
            return []
        return [(n, m) for n, m in block.named_modules() if n == leaf or n.endswith("." + leaf)]

    def residual_branches(self, block, kind: str) -> list[tuple[str, "object", "object"]]:
        """``(parent name inside block, pre-norm, branch-output module)`` of each ``kind`` sub-layer
        of a block: h = the norm's input, h + branch = the residual sum after the sub-layer. Without a
        table, ``pre_norms`` and ``branch_outputs`` are dotted names inside the block (a method's
        config named them; no pre-norm: None)."""
        if not self.table:
            norm = self.pre_norms.get(kind)
            return [("", block.get_submodule(norm) if norm else None, block.get_submodule(self.branch_outputs[kind]))]
        out = []
        for name, sub in self.sublayers(block, kind):
            parent_name = name.rpartition(".")[0]
            parent = block.get_submodule(parent_name) if parent_name else block
            branch = self.branch_outputs.get(kind, "")
            out.append((parent_name, parent.get_submodule(self.pre_norms[kind]),
                        parent.get_submodule(branch) if branch else sub))
        return out

    def block_norms(self, block) -> list[tuple[str, "object"]]:
        """``(dotted name inside block, module)`` of the norms inside a block."""
        return [(n, m) for n, m in block.named_modules() if n.rsplit(".", 1)[-1] in self.norms]


def _families() -> dict[str, Family]:
    from peftlab.models.gpt2 import GPT2
    from peftlab.models.llama import LLAMA
    from peftlab.models.t5 import T5

    return {f.name: f for f in (T5, LLAMA, GPT2)}


def table_of(model_or_config) -> Family | None:
    """The family table covering a HF model's (or config's) ``model_type``, or None."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    return next((f for f in _families().values() if model_type in f.model_types), None)


def table_types() -> list[str]:
    """Every ``model_type`` a family table covers."""
    return sorted(t for f in _families().values() for t in f.model_types)


def family_of(model_or_config) -> Family:
    """The family table for a HF model (or its config), by ``config.model_type``."""
    fam = table_of(model_or_config)
    if fam is None:
        model_type = getattr(getattr(model_or_config, "config", model_or_config), "model_type", None)
        raise ModelError(f"model type {model_type!r} has no peftlab architecture table "
                         f"(supported: {', '.join(table_types())})")
    return fam


def family_for(model) -> Family:
    """The family table of ``model``, or where its type has none the family inferred from the model
    itself (``peftlab.models.generic``: its stacks of blocks, for methods that name their layers)."""
    from peftlab.models.generic import inferred_family

    return table_of(model) or inferred_family(model)


def get_family(name: str) -> Family:
    fams = _families()
    if name not in fams:
        raise ModelError(f"unknown model family {name!r} (known: {', '.join(sorted(fams))})")
    return fams[name]
