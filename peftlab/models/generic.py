"""The family of a model without a table: its linear layers by name, and nothing it cannot see.

A family table (``t5.py``, ``llama.py``, ``gpt2.py``) knows roles (``q`` is T5's ``q``, LLaMA's
``q_proj``), the attention modules and their geometry, the norms, the embeddings. For any other
``transformers`` model (BERT, Phi-3, ...) peftlab infers only what the module tree shows for sure:

* the **stacks**: each outermost ``nn.ModuleList`` whose items are modules of one class holding a
  linear layer (``bert.encoder.layer``, ``model.layers``); a stack is named by its path;
* the **width** (``config.hidden_size``) and the **kind**: ``seq2seq`` (``is_encoder_decoder``),
  ``causal`` (the model generates) or ``encoder`` (BERT).

That is enough for the methods whose config names their layers: LoRA and IA3 on linear layers inside
the blocks by leaf name, ``re:<regex>`` or ``all-linear`` (``targets``, peft's ``target_modules``),
bottleneck adapters on the residual branches their ``branches`` name, full fine-tuning. A method that
needs the rest (prefix tuning: the attention modules; prompt tuning: where the inputs go; ...) says so
in ``MethodConfig.needs_table`` and ``apply_methods`` refuses it, naming what is missing.
"""

from __future__ import annotations

from torch import nn

from peftlab.errors import ModelError
from peftlab.models.arch import Family


def holds_linear(module: nn.Module) -> bool:
    """Some submodule has a 2-D weight and is not an embedding: an ``nn.Linear``, GPT-2's ``Conv1D``,
    a quantized linear layer, or a method's wrapper of one (they keep ``weight``)."""
    return any(getattr(m, "weight", None) is not None and m.weight.dim() == 2 and not isinstance(m, nn.Embedding)
               for m in module.modules())


def block_lists(model: nn.Module) -> list[str]:
    """Dotted paths of the outermost ``nn.ModuleList``s of same-class blocks that hold linear layers."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or any(name.startswith(f + ".") for f in found):
            continue
        if len({type(b) for b in module}) == 1 and not isinstance(module[0], nn.Linear) and holds_linear(module[0]):
            found.append(name)
    return found


def model_kind(model: nn.Module) -> str:
    if getattr(model.config, "is_encoder_decoder", False):
        return "seq2seq"
    can_generate = getattr(model, "can_generate", None)
    return "causal" if can_generate is not None and can_generate() else "encoder"


def inferred_family(model: nn.Module) -> Family:
    """The family of a model that has no table (see the module docstring)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None) or type(model).__name__
    stacks = block_lists(model)
    if not stacks:
        raise ModelError(f"this {model_type} model has no peftlab family table, and peftlab found no stack of "
                         f"blocks in it (an nn.ModuleList of layers of one class holding linear layers)")
    return Family(
        name=model_type,
        model_types=(model_type,),
        kind=model_kind(model),
        linear_roles={},  # no roles without a table: targets are leaf names, re:<regex> or all-linear
        stacks={path: path for path in stacks},
        encoder=None,
        hidden_size="hidden_size",  # every transformers config answers it (attribute_map)
        num_heads="num_attention_heads",
        default_lora_targets=(),
        table=False,
    )
