"""BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models (Ben Zaken
et al., ACL 2022, arXiv:2106.10199).

Only the bias terms train; every weight stays frozen::

    h = W x + b          b trained, W frozen (every targeted linear layer; the norms' shifts β)

BitFit was made for BERT, whose linear layers and LayerNorms all have biases. T5 and LLaMA have
none: there (``add: true``, the default) peftlab **adds** a zero bias to every targeted linear
layer (the model starts as the base model) and trains it; RMSNorm has no shift, and none is added.
Where a layer has its own bias (GPT-2's ``Conv1D``, Qwen2's q/k/v) that bias trains in place,
under its own name, as do LayerNorm biases (``norms``). ``add: false`` trains only the biases a
model has. Added biases have no place in the plain transformers model of a bias-free family, so a
config that may add them cannot be merged (``add: false`` merges: the biases it trains are the
base's own). HF peft has no BitFit (its LoRA ``bias: all`` trains existing biases only).
Parameters: the targeted layers' output widths (+ the LayerNorm widths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule, BaseWeights, MethodConfig
from peftlab.methods.hooks.targets import find_linears, is_fan_in_fan_out, linear_dims, linear_forward, replace_module
from peftlab.methods.hooks.weight_delta import check_targets, like


class AddedBias(AdapterModule):
    """A bias-free linear layer (``nn.Linear``) with a trained bias added: ``h = W x + b``, b = 0 at init."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.in_features, self.out_features = linear_dims(base)
        self.fan_in_fan_out = is_fan_in_fan_out(base)
        self.weight, self.bias = base.weight, base.bias  # frozen (bias None), original names
        self.added_bias = nn.Parameter(torch.zeros(self.out_features, device=base.weight.device))  # b: (out,)

    def adapter_parameters(self):
        return iter((self.added_bias,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_forward(x, self.weight, like(self.added_bias, x), self.fan_in_fan_out)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}"


@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    name = "bitfit"
    needs_table = "the norms (family table's norms)"
    targets: tuple[str, ...] = ("all-linear",)  # roles, leaf names, "all-linear" or "re:<regex>"
    stacks: Optional[tuple[str, ...]] = None  # e.g. ("encoder",); None = every stack
    add: bool = True  # add a zero bias where a targeted linear layer has none (T5, LLaMA)
    norms: bool = True  # also train the norms' biases where they have them (LayerNorm's β)

    def __post_init__(self):
        check_targets(self.targets)

    @property
    def cannot_merge(self) -> str | None:
        if not self.add:
            return None
        return ("it adds biases to linear layers that have none (T5, LLaMA), which the plain transformers model "
                "has no place for (on a model whose layers have biases, add: false merges)")

    def describe(self) -> str:
        return "BitFit"

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        added, own = [], []
        for name, linear in find_linears(model, family, self.targets, stacks=self.stacks, method=self.name):
            if type(linear) is not nn.Linear and not is_fan_in_fan_out(linear):
                raise ModelError(f"bitfit: {name} is already wrapped by another method ({type(linear).__name__})")
            if linear.bias is not None:
                own.append(linear.bias)
            elif self.add:
                added.append(AddedBias(linear))
                replace_module(model, name, added[-1])
        if self.norms:
            norms = [m for _, _, block in family.blocks(model, self.stacks) for _, m in family.block_norms(block)]
            norms += [model.get_submodule(p) for p in family.final_norms] if self.stacks is None else []
            own += [n.bias for n in norms if isinstance(getattr(n, "bias", None), nn.Parameter)]
        if not added and not own:
            raise ModelError("bitfit: the targeted layers and norms have no biases (a bias-free model: T5, LLaMA); "
                             "add: true adds them")
        return added + ([BaseWeights(own)] if own else [])

    def merge_into_base(self, model: nn.Module, family) -> None:
        """Nothing to fold: with ``add: false`` the trained biases are the base's own."""
