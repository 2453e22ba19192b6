"""OFT: Controlling Text-to-Image Diffusion by Orthogonal Finetuning (Qiu et al., NeurIPS 2023,
arXiv:2306.07280), block-diagonal, as in peft 0.21.

The frozen weight is rotated, not added to: an orthogonal R multiplies its input side, so the
angles between its neurons (the "hyperspherical energy") are kept::

    h = W Rᵀ x + b,    R = diag(R₁, ..., R_k) of k = in / s blocks of size s
    Rᵢ = (I + Qᵢ)(I − Qᵢ)⁻¹ (Cayley),   Qᵢ = −Qᵢᵀ from s(s − 1)/2 trained entries, 0 at init (R = I)

Each block's skew-symmetric Qᵢ is stored as its strict upper triangle (``oft_r``: (k, s(s−1)/2)).
As peft's default (``use_cayley_neumann``), the inverse is a truncated Neumann series,
Rᵢ ≈ I + 2Qᵢ + 2Qᵢ² + ... + Qᵢⁿ (``neumann_terms``: peft's ``num_cayley_neumann_terms``, its
exact series of terms reproduced); ``neumann_terms: 0`` is the exact transform, computed as peft's
``(I − Q)(I + Q)⁻¹`` (the same family of rotations, Q ↦ −Q). The input is rotated per block
(x ↦ Rᵀx, ``(..., k, s) · (k, s, s)``) before the frozen layer runs; nothing (out × in) is built.
``merge`` writes W Rᵀ into the plain layer (``unmerge`` multiplies by the inverse back); ``to_peft``
writes peft's OFT (``oft_block_size``, r = 0). ``block_size`` must divide each target's input width
(peft adjusts it with a warning; peftlab refuses, naming the widths). Parameters per layer:
(in / s) · s(s − 1)/2. peft's COFT, block sharing and module dropout are not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from peftlab.config import FieldError
from peftlab.errors import ModelError
from peftlab.methods.base import MethodConfig
from peftlab.methods.hooks.targets import peft_targets
from peftlab.methods.hooks.weight_delta import (WeightLinear, check_targets, merge_wrapped, refuse_merged, wrap_linears,
                                                wrapped_modules)


def cayley(q: torch.Tensor, terms: int) -> torch.Tensor:
    """Rotations (k, s, s) of skew-symmetric ``q`` (k, s, s): peft's truncated series of
    (I + Q)(I − Q)⁻¹ with ``terms`` terms, or (``terms`` = 0) exactly (I − Q)(I + Q)⁻¹."""
    eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype).expand_as(q)
    if terms == 0:
        return torch.linalg.solve(eye + q, eye - q, left=False)
    r = eye.clone()
    if terms > 1:
        r = r + 2 * q
    if terms > 2:  # 2Q² ... 2Q^(n-2), then Q^(n-1) once (n >= 4; three terms run as four, as in peft)
        power = q
        for _ in range(2, max(terms, 4) - 1):
            power = power @ q
            r = r + 2 * power
        r = r + power @ q
    return r


class OFTLinear(WeightLinear):
    def __init__(self, base: nn.Module, block_size: int, terms: int):
        super().__init__(base)
        s = block_size
        self.blocks, self.block_size, self.terms = self.in_features // s, s, terms
        self.oft_r = nn.Parameter(torch.zeros(self.blocks, s * (s - 1) // 2, device=base.weight.device))
        rows, cols = torch.triu_indices(s, s, 1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def rotation(self) -> torch.Tensor:
        """R's blocks, (k, s, s)."""
        s, v = self.block_size, self.oft_r
        q = torch.zeros(self.blocks, s, s, device=v.device, dtype=v.dtype)
        q[:, self.rows, self.cols] = v
        return cayley(q - q.transpose(-2, -1), self.terms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_forward(x)
        r = self.rotation()
        blocks = x.reshape(*x.shape[:-1], self.blocks, self.block_size).to(r.dtype)
        rotated = torch.einsum("...ks,kst->...kt", blocks, r).reshape(x.shape)  # x_t = Σ_s x_s R_st = (Rᵀx)_t
        return self.base_forward(rotated.to(x.dtype))

    def merged_weight(self, w: torch.Tensor) -> torch.Tensor:
        return (w.float() @ torch.block_diag(*self.rotation()).T).to(w.dtype)  # W Rᵀ

    def unmerged_weight(self, w: torch.Tensor) -> torch.Tensor:
        return (w.float() @ torch.linalg.inv(torch.block_diag(*self.rotation()).T)).to(w.dtype)


@dataclass(frozen=True)
class OFTConfig(MethodConfig):
    name = "oft"
    block_size: int = 32  # s, the size of each rotation block (peft's oft_block_size)
    neumann_terms: int = 5  # terms of the Cayley transform's Neumann series (peft's default); 0 = exact
    targets: tuple[str, ...] = ("q", "v")  # roles, leaf names, "all-linear" or "re:<regex>"
    stacks: Optional[tuple[str, ...]] = None  # e.g. ("encoder",); None = every stack

    def __post_init__(self):
        if self.block_size < 2:
            raise FieldError("block_size", f"block_size must be >= 2, got {self.block_size}")
        if self.neumann_terms < 0:
            raise FieldError("neumann_terms", f"neumann_terms must be >= 0 (0 = exact), got {self.neumann_terms}")
        check_targets(self.targets)

    cannot_merge = None  # W Rᵀ is a weight of the same shape

    def describe(self) -> str:
        return f"OFT s={self.block_size}"

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        def make(linear):
            module = OFTLinear(linear, self.block_size, self.neumann_terms)
            if module.in_features % self.block_size:
                raise ModelError(f"oft: block_size {self.block_size} does not divide the input width "
                                 f"{module.in_features} of a target; pick a divisor of every target's width")
            return module

        return wrap_linears(model, family, self.targets, self.stacks, self.name, make)

    def merge_into_base(self, model: nn.Module, family) -> None:
        merge_wrapped(model, OFTLinear)

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict]:
        wrapped = wrapped_modules(model, OFTLinear)
        refuse_merged(wrapped, "OFT")
        tensors = {f"base_model.model.{name}.oft_R.weight": m.oft_r.detach().cpu().contiguous()
                   for name, m in wrapped.items()}
        config = {"peft_type": "OFT", "r": 0, "oft_block_size": self.block_size, "module_dropout": 0.0,
                  "target_modules": peft_targets(model, set(wrapped)), "bias": "none", "init_weights": True,
                  "fan_in_fan_out": any(m.fan_in_fan_out for m in wrapped.values()), "coft": False,
                  "block_share": False, "use_cayley_neumann": self.neumann_terms > 0,
                  "num_cayley_neumann_terms": self.neumann_terms or 5,
                  # the series as peft computes it since 0.18 (peft warns where an OFT adapter does not say so)
                  "peft_version": "0.18.0"}
        return config, tensors
