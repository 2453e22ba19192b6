"""DoRA: Weight-Decomposed Low-Rank Adaptation (Liu et al., 2024, arXiv:2402.09353).

The adapted weight is split into a trained magnitude and a direction that LoRA updates::

    W' = m ⊙ (W + ΔW) / ‖W + ΔW‖_c,      ΔW = (α / r) B A           m: (out,)
    h  = W' x + b  =  W x + b + (m / ‖W + ΔW‖_c − 1) ⊙ W x + (m / ‖W + ΔW‖_c) ⊙ (α / r) B A x

‖·‖_c is the norm of each output row (the paper's column norm of the (in × out) weight). ``m`` starts
at ‖W‖_c and ``B`` at zero, so the model starts as the base model. As the paper (§4.3) and peft do,
‖W + ΔW‖_c is treated as a constant: it is computed from a detached ΔW and receives no gradient,
so the gradient reaches ``m``, ``A`` and ``B`` only through the numerators (and the step costs no
backward through an (out × in) norm). With LoRA dropout the two update terms read the dropped
input, as peft computes them (``W x`` of the dropped input is then computed once more).

Everything else is LoRA's (``lora.py``): ``r``, ``alpha``, ``rslora``, ``targets``, ``init``
(PiSSA / OLoRA included: the direction is then ``W_res + ΔW``), GPT-2's ``Conv1D`` (the magnitude
is per output feature either way). Parameters per layer: r (in + out) + out. ``merge`` writes
``W'`` into the plain layer (and keeps ‖W + ΔW‖_c for ``unmerge``); ``to_peft`` is peft's LoRA with
``use_dora`` and each layer's ``lora_magnitude_vector``. A 4-/8-bit base is refused (the norm
needs ``W`` itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.hooks.targets import linear_forward
from peftlab.methods.lora import LoraConfig, LoraLinear


class DoraLinear(LoraLinear):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float, init: str, rslora: bool):
        super().__init__(base, r, alpha, dropout, init, rslora)
        if self.base_layer is not None:
            raise ModelError("dora: the magnitude needs the base weight's norms; a 4-bit/8-bit base is not "
                             "supported (model.quantize: none)")
        with torch.no_grad():
            self.magnitude = nn.Parameter(self.column_norm().float())  # (out,): m = ‖W + ΔW‖_c at init
        self.merged_norm: torch.Tensor | None = None  # ‖W + ΔW‖_c at merge time, for unmerge

    def adapter_parameters(self):
        return iter((self.lora_a, self.lora_b, self.magnitude))

    def lora_b_parameters(self):
        # LoRA+ steps B and the magnitude vector at ratio × lr, as peft's create_loraplus_optimizer does
        return iter((self.lora_b, self.magnitude))

    def column_norm(self) -> torch.Tensor:
        """‖W + ΔW‖_c per output feature (out,), from a detached ΔW: a constant to the gradient."""
        w = self.oriented_weight()
        return torch.linalg.norm(w + self.update_weight().detach().to(w.dtype), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return linear_forward(x, self.weight, self.bias, self.fan_in_fan_out)
        scale = self.magnitude / self.column_norm().detach()  # (out,)
        a, b = self.factors(x)
        dropped = not isinstance(self.dropout, nn.Identity) and self.training
        xd = self.dropout(x) if dropped else x
        base = self.residual_forward(x)  # W_res x (W x where the init is not PiSSA / OLoRA), no bias
        base_d = self.residual_forward(xd) if dropped else base
        lora = F.linear(F.linear(xd, a), b) * self.scaling
        y = base + (scale - 1) * base_d + scale * lora
        return y if self.bias is None else y + self.bias

    def residual_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear_forward(x, self.weight, None, self.fan_in_fan_out)
        return y if self.lora_a0 is None else y - self.principal(x)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            w = self.oriented_weight()
            adapted = w + self.update_weight().to(w.dtype)
            self.merged_norm = torch.linalg.norm(adapted, dim=1)
            self._store((self.magnitude / self.merged_norm)[:, None].to(w.dtype) * adapted)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self.oriented_weight()
            factor = (self.magnitude / self.merged_norm)[:, None].to(w.dtype)
            self._store(w / factor - self.update_weight().to(w.dtype))
            self.merged, self.merged_norm = False, None

    def _store(self, w: torch.Tensor) -> None:
        self.weight.copy_((w.T if self.fan_in_fan_out else w).to(self.weight.dtype))


@dataclass(frozen=True)
class DoraConfig(LoraConfig):
    name = "dora"

    def describe(self) -> str:
        return f"DoRA r={self.r}"

    def layer(self, linear: nn.Module) -> DoraLinear:
        return DoraLinear(linear, self.r, self.alpha, self.dropout, self.init, self.rslora)

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict]:
        """peft's LoRA with ``use_dora``: A, B as LoRA exports them, plus each layer's magnitude."""
        config, tensors = super().to_peft(model, family)
        for name, m in model.named_modules():
            if isinstance(m, DoraLinear):
                tensors[f"base_model.model.{name}.lora_magnitude_vector"] = m.magnitude.detach().cpu().contiguous()
        return {**config, "use_dora": True}, tensors
