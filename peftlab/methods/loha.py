"""LoHa: low-rank Hadamard product, from FedPara (Hyeon-Woo et al., ICLR 2022, arXiv:2108.06098), as
LyCORIS (Yeh et al., 2024, arXiv:2309.14859) adapts it to fine-tuning.

The update is the element-wise product of two rank-r matrices, of rank up to r² for 2r(in + out)
parameters per layer::

    h = W x + b + ΔW x,   ΔW = (α / r) (B₁ A₁) ⊙ (B₂ A₂)       B₁, B₂: (out × r), A₁, A₂: (r × in)

B₁, A₁, B₂ start Kaiming-uniform and A₂ at zero, so ΔW = 0 at init. ΔW (out × in) is built every
step (the product has no cheaper form), as peft does. peft's names: ``hada_w1_a`` = B₁,
``hada_w1_b`` = A₁, ``hada_w2_a`` = B₂, ``hada_w2_b`` = A₂. peft's rank and module dropout are not
implemented. ``merge`` folds ΔW into W; ``to_peft`` writes peft's LoHa (``nn.Linear`` layers: peft's
LoHa does not take GPT-2's ``Conv1D``, which peftlab's does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.base import MethodConfig
from peftlab.methods.hooks.targets import peft_targets
from peftlab.methods.hooks.weight_delta import (WeightLinear, check_rank, check_targets, merge_wrapped, refuse_merged,
                                                wrap_linears, wrapped_modules)

_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class HadamardLinear(WeightLinear):
    def __init__(self, base: nn.Module, r: int, alpha: float):
        super().__init__(base)
        out, inp, device = self.out_features, self.in_features, base.weight.device
        self.hada_w1_a = nn.Parameter(torch.empty(out, r, device=device))  # B₁
        self.hada_w1_b = nn.Parameter(torch.empty(r, inp, device=device))  # A₁
        self.hada_w2_a = nn.Parameter(torch.empty(out, r, device=device))  # B₂
        self.hada_w2_b = nn.Parameter(torch.zeros(r, inp, device=device))  # A₂ = 0: ΔW = 0 at init
        for p in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        self.scaling = alpha / r

    def adapter_parameters(self):
        return iter(getattr(self, n) for n in _FACTORS)

    def delta(self) -> torch.Tensor:
        return (self.hada_w1_a @ self.hada_w1_b) * (self.hada_w2_a @ self.hada_w2_b) * self.scaling


@dataclass(frozen=True)
class LoHaConfig(MethodConfig):
    name = "loha"
    r: int = 8  # rank of each factor (ΔW has rank up to r²)
    alpha: float = 8.0  # ΔW is scaled by alpha / r
    targets: tuple[str, ...] = ("q", "v")  # roles, leaf names, "all-linear" or "re:<regex>"
    stacks: Optional[tuple[str, ...]] = None  # e.g. ("encoder",); None = every stack

    def __post_init__(self):
        check_rank(self)
        check_targets(self.targets)

    cannot_merge = None  # W + ΔW is a weight of the same shape

    def describe(self) -> str:
        return f"LoHa r={self.r}"

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        return wrap_linears(model, family, self.targets, self.stacks, self.name,
                            lambda linear: HadamardLinear(linear, self.r, self.alpha))

    def merge_into_base(self, model: nn.Module, family) -> None:
        merge_wrapped(model, HadamardLinear)

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict]:
        wrapped = wrapped_modules(model, HadamardLinear)
        refuse_merged(wrapped, "LoHa")
        if any(m.fan_in_fan_out for m in wrapped.values()):
            raise ModelError("peft export: peft's LoHa takes nn.Linear layers only, not GPT-2's Conv1D")
        tensors = {f"base_model.model.{name}.{f}": getattr(m, f).detach().cpu().contiguous()
                   for name, m in wrapped.items() for f in _FACTORS}
        config = {"peft_type": "LOHA", "r": self.r, "alpha": self.alpha, "rank_dropout": 0.0, "module_dropout": 0.0,
                  "target_modules": peft_targets(model, set(wrapped)), "init_weights": True,
                  "use_effective_conv2d": False}
        return config, tensors
