"""LLaMA-Adapter V2: Parameter-Efficient Visual Instruction Model (Gao et al., 2023,
arXiv:2304.15010), the language part as in lit-llama's ``adapter_v2.py``, which seed 003 used.

v1 (``llama_adapter.py``: gated adaption prompts on the top L layers) plus

* a learnable bias and scale on every linear layer, the LM head included::

      y = s ⊙ (W x + b + β)        β: zeros, s: ones (out,)  ->  identity at init

* every norm layer unfrozen (each block's two RMSNorms and the final one).

Count on LLaMA-7B (d=4096, 32 layers, 32 heads, FFN 11008, vocab 32000), with v1's L=30, K=10:
v1 1,229,760 + bias/scale 2·32·(3·4096 + 4096 + 2·11008 + 4096) = 2,719,744 on the block linears
(q, k, v, o, gate, up, down; lit-llama's fused ``c_attn`` has the same 3·4096 outputs)
+ 2·32,000 on the LM head + RMSNorms 2·32·4096 + 4096 = 266,240: 4,279,744, seed 003's figure
exactly (lit-llama patches every ``nn.Linear``, ``lm_head`` included, and trains ``rms_1``,
``rms_2``, ``ln_f``). A test checks it on the 7B config built on the meta device.

Composition with LoRA: LoRA first, then v2, works: v2 scales the LoRA layer's output,
``y = s ⊙ (LoRA(x) + β)``. v2 first, then LoRA on the same linear, is refused by LoRA
("q_proj is already wrapped (LlamaAdapterV2Linear)"): apply LoRA before llama_adapter_v2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule, BaseWeights
from peftlab.methods.llama_adapter import LlamaAdapterConfig
from peftlab.methods.hooks.targets import replace_module

SLOT = "adapter_v2"  # <linear>.<SLOT>: bias and scale on a linear that another method wrapped


class BiasScale(AdapterModule):
    """β and s of one linear layer (out,)."""

    def __init__(self, out_features: int, device=None):
        super().__init__()
        self.adapter_bias = nn.Parameter(torch.zeros(out_features, device=device))  # β
        self.adapter_scale = nn.Parameter(torch.ones(out_features, device=device))  # s

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        s = self.adapter_scale.to(y.dtype)
        return torch.addcmul(self.adapter_bias.to(y.dtype) * s, y, s)  # (y + β) ⊙ s in one pass over y


class LlamaAdapterV2Linear(BiasScale):
    """A plain ``nn.Linear`` with v2's bias and scale; ``weight``/``bias`` keep their names."""

    def __init__(self, base: nn.Linear):
        super().__init__(base.out_features, base.weight.device)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # frozen, original names (ties kept)

    def adapter_parameters(self):
        return iter((self.adapter_bias, self.adapter_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.linear(x, self.weight, self.bias))


def _scale_output(module, args, output):
    # Looked up at call time (not closed over), so a deep copy of the model runs its own copy.
    return getattr(module, SLOT)(output)




@dataclass(frozen=True)
class LlamaAdapterV2Config(LlamaAdapterConfig):
    name = "llama_adapter_v2"

    def describe(self) -> str:
        return "LLaMA-Adapter v2" + super().describe()[len("LLaMA-Adapter"):]

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        added = super().apply(model, family)  # v1: gated adaption prompts
        linears = [(f"{family.stacks[s]}.{i}.{n}", m) for s, i, block in family.blocks(model)
                   for n, m in block.named_modules() if _is_linear(m)]
        linears = [(n, m) for n, m in linears if not any(n.startswith(o + ".") for o, _ in linears)]  # not LoRA's inner layer
        if family.lm_head:
            linears.append((family.lm_head, model.get_submodule(family.lm_head)))
        for name, linear in linears:
            added.append(self._bias_scale(model, name, linear))
        norms = [m for _, _, block in family.blocks(model) for _, m in family.block_norms(block)]
        norms += [model.get_submodule(path) for path in family.final_norms]
        added.append(BaseWeights([p for norm in norms for p in norm.parameters()]))
        return added

    def to_peft(self, model, family):
        raise ModelError(f"peft export: {self.name} has no peft form (peft's adaption prompt is v1: no bias and "
                         f"scale on the linear layers, frozen norms); the peftlab adapter keeps all of it")

    def _bias_scale(self, model, name: str, linear: nn.Module) -> AdapterModule:
        if isinstance(linear, BiasScale) or hasattr(linear, SLOT):
            raise ModelError(f"{self.name}: {name} already has a bias and scale")
        if type(linear) is nn.Linear:
            wrapped = LlamaAdapterV2Linear(linear)
            replace_module(model, name, wrapped)
            return wrapped
        # Wrapped by an earlier method (LoRA) or quantized: scale its output in place.
        extra = BiasScale(linear.out_features, next(linear.parameters()).device)
        linear.add_module(SLOT, extra)
        linear.register_forward_hook(_scale_output)
        return extra


def _is_linear(m: nn.Module) -> bool:
    from peftlab.methods.lora import LoraLinear, is_quantized

    return type(m) is nn.Linear or isinstance(m, LoraLinear) or is_quantized(m)
