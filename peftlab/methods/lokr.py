"""LoKr: low-rank Kronecker product, from KronA (Edalati et al., 2022, arXiv:2212.10650), as LyCORIS
(Yeh et al., 2024, arXiv:2309.14859) adapts it to fine-tuning.

With out = a·b and in = c·d (each split into two factors near its square root)::

    h = W x + b + ΔW x,   ΔW = (α / r) W₁ ⊗ W₂        W₁: (a × c), W₂: (b × d) = B₂ A₂ of rank r

W₁ is a full matrix (or B₁ A₁ of rank r with ``decompose_both``, where r < max(a, c) / 2); W₂ is
B₂ A₂ (b × r)(r × d) unless r ≥ max(b, d) / 2, where a full (b × d) matrix is no larger. W₁ (or
B₁) starts at zero and the rest Kaiming-uniform, so ΔW = 0 at init. The factor split is peft's
``factorization`` (``decompose_factor``: -1 = nearest the square root, else the split with one
side at most that factor), so shapes, counts and exports match peft. peft's names: ``lokr_w1``,
``lokr_w1_a`` (B₁), ``lokr_w1_b`` (A₁), ``lokr_w2``, ``lokr_w2_a`` (B₂), ``lokr_w2_b`` (A₂). peft's
rank and module dropout are not implemented. ``merge`` folds ΔW into W; ``to_peft`` writes peft's
LoKr (``nn.Linear`` layers only, as peft takes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from peftlab.config import FieldError
from peftlab.errors import ModelError
from peftlab.methods.base import MethodConfig
from peftlab.methods.hooks.targets import peft_targets
from peftlab.methods.hooks.weight_delta import (WeightLinear, check_rank, check_targets, merge_wrapped, refuse_merged,
                                                wrap_linears, wrapped_modules)


def factorization(dim: int, factor: int = -1) -> tuple[int, int]:
    """``dim = m · n``: ``(factor, dim / factor)`` where ``factor`` divides ``dim``; else the divisor
    pair nearest the square root with m ≤ ``factor`` (any, for -1), smaller first."""
    if factor > 0 and dim % factor == 0:
        return factor, dim // factor
    limit = dim if factor == -1 else factor
    m, n = 1, dim
    while m < n:
        nxt = next(k for k in range(m + 1, dim + 1) if dim % k == 0)
        if nxt > limit:
            break
        m, n = nxt, dim // nxt
    return min(m, n), max(m, n)


class KroneckerLinear(WeightLinear):
    def __init__(self, base: nn.Module, r: int, alpha: float, decompose_both: bool, factor: int):
        super().__init__(base)
        (a, b), (c, d) = factorization(self.out_features, factor), factorization(self.in_features, factor)
        device, self.names = base.weight.device, []

        def add(name: str, *shape: int, zero: bool = False):
            p = nn.Parameter(torch.zeros(*shape, device=device))
            if not zero:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            setattr(self, name, p)
            self.names.append(name)

        if decompose_both and r < max(a, c) / 2:
            add("lokr_w1_a", a, r, zero=True)  # B₁ = 0
            add("lokr_w1_b", r, c)  # A₁
        else:
            add("lokr_w1", a, c, zero=True)  # W₁ = 0
        if r >= max(b, d) / 2:
            add("lokr_w2", b, d)
        else:
            add("lokr_w2_a", b, r)  # B₂
            add("lokr_w2_b", r, d)  # A₂
        self.scaling = alpha / r

    def adapter_parameters(self):
        return iter(getattr(self, n) for n in self.names)

    def factor(self, i: int) -> torch.Tensor:
        full = getattr(self, f"lokr_w{i}", None)
        return full if full is not None else getattr(self, f"lokr_w{i}_a") @ getattr(self, f"lokr_w{i}_b")

    def delta(self) -> torch.Tensor:
        return torch.kron(self.factor(1), self.factor(2)) * self.scaling  # (a·b, c·d) = (out, in)


@dataclass(frozen=True)
class LoKrConfig(MethodConfig):
    name = "lokr"
    r: int = 8  # rank of the low-rank Kronecker factor(s)
    alpha: float = 8.0  # ΔW is scaled by alpha / r
    decompose_both: bool = False  # W₁ as B₁ A₁ too (where r < max(a, c) / 2)
    decompose_factor: int = -1  # -1: split each dimension near its square root; else one side <= this
    targets: tuple[str, ...] = ("q", "v")  # roles, leaf names, "all-linear" or "re:<regex>"
    stacks: Optional[tuple[str, ...]] = None  # e.g. ("encoder",); None = every stack

    def __post_init__(self):
        check_rank(self)
        if self.decompose_factor == 0 or self.decompose_factor < -1:
            raise FieldError("decompose_factor", f"decompose_factor must be -1 or >= 1, got {self.decompose_factor}")
        check_targets(self.targets)

    cannot_merge = None  # W + ΔW is a weight of the same shape

    def describe(self) -> str:
        return f"LoKr r={self.r}"

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        return wrap_linears(model, family, self.targets, self.stacks, self.name,
                            lambda linear: KroneckerLinear(linear, self.r, self.alpha, self.decompose_both,
                                                           self.decompose_factor))

    def merge_into_base(self, model: nn.Module, family) -> None:
        merge_wrapped(model, KroneckerLinear)

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict]:
        wrapped = wrapped_modules(model, KroneckerLinear)
        refuse_merged(wrapped, "LoKr")
        if any(m.fan_in_fan_out for m in wrapped.values()):
            raise ModelError("peft export: peft's LoKr takes nn.Linear layers only, not GPT-2's Conv1D")
        tensors = {f"base_model.model.{name}.{f}": getattr(m, f).detach().cpu().contiguous()
                   for name, m in wrapped.items() for f in m.names}
        config = {"peft_type": "LOKR", "r": self.r, "alpha": self.alpha, "rank_dropout": 0.0, "module_dropout": 0.0,
                  "decompose_both": self.decompose_both, "decompose_factor": self.decompose_factor,
                  "rank_dropout_scale": False, "target_modules": peft_targets(model, set(wrapped)),
                  "init_weights": True, "use_effective_conv2d": False}
        return config, tensors
