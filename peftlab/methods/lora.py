"""LoRA: Low-Rank Adaptation of Large Language Models (Hu et al., 2021, arXiv:2106.09685).

A frozen linear map ``W`` (out × in) gets a trainable low-rank update::

    h = W x + b + (α / r) · B A dropout(x)        A: (r × in), B: (out × r)

``A`` starts Kaiming-uniform (or Gaussian), ``B`` starts at zero, so ``h = W x + b`` at init.
``merge`` folds ``(α/r) B A`` into ``W`` for zero inference latency; ``unmerge`` takes it out.
With ``rslora`` the scale is ``α / √r`` (Kalajdzievski, 2023). The wrapper keeps ``weight`` and
``bias`` under their original names, so base checkpoints still load strictly. A GPT-2 ``Conv1D``
stores ``W`` transposed (in × out): the base is computed as ``Conv1D`` computes it and the merged
update is ``(α/r) (B A)ᵀ`` (peft's ``fan_in_fan_out``); ``A`` and ``B`` have the same shapes either way.

QLoRA (Dettmers et al., 2023, arXiv:2305.14314): when ``W`` is a bitsandbytes 4-bit (NF4/FP4)
or 8-bit layer, the wrapper calls it as ``base_layer`` (it dequantizes on the fly) and only ``A``,
``B`` are trained, in full precision. Merging into a quantized ``W`` would re-quantize it (lossy),
so it is refused; ``peftlab merge`` loads the base in full precision and merges there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import ModelError
from peftlab.kernels.lora import FusedLora
from peftlab.methods.base import AdapterModule, MethodConfig
from peftlab.methods.hooks.targets import (find_linears, is_fan_in_fan_out, linear_dims, linear_forward, peft_targets,
                                          replace_module, unwrap_linear)


def is_quantized(linear: nn.Module) -> bool:
    """A bitsandbytes 4-bit or 8-bit linear layer (frozen base of QLoRA)."""
    return type(linear).__module__.startswith("bitsandbytes") and type(linear).__name__ in ("Linear4bit", "Linear8bitLt")


class LoraLinear(AdapterModule):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float, init: str, rslora: bool):
        super().__init__()
        self.in_features, self.out_features = linear_dims(base)
        self.fan_in_fan_out = is_fan_in_fan_out(base)  # a Conv1D: W is stored (in, out)
        if is_quantized(base):
            self.base_layer = base  # quantized weights stay inside their own module
        else:
            self.base_layer = None
            self.weight, self.bias = base.weight, base.bias  # frozen, original names
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(r, self.in_features, device=device))  # (r, in)
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, r, device=device))  # (out, r)
        if init == "gaussian":
            nn.init.normal_(self.lora_a, std=1.0 / r)
        else:
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def adapter_parameters(self):
        return iter((self.lora_a, self.lora_b))

    def delta_weight(self) -> torch.Tensor:
        """The update in the base weight's own layout: (out, in), or (in, out) for a Conv1D."""
        delta = (self.lora_b @ self.lora_a) * self.scaling  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:  # the update is in the weight: the plain layer's work and nothing else
            return linear_forward(x, self.weight, self.bias, self.fan_in_fan_out)
        if self.fused and not self.fan_in_fan_out and self._frozen_base():
            return self._fused_forward(x)
        a, b = self.factors(x)
        return self.base_forward(x) + F.linear(F.linear(self.dropout(x), a), b) * self.scaling

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen layer's own output ``W x + b`` (a quantized base dequantizes on the fly)."""
        if self.base_layer is None:
            return linear_forward(x, self.weight, self.bias, self.fan_in_fan_out)
        return self.base_layer(x)

    def factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` and ``B`` in ``x``'s dtype where autocast does not cast them (fp32 factors, bf16 input)."""
        a, b = self.lora_a, self.lora_b
        if not torch.is_autocast_enabled(x.device.type) and a.dtype != x.dtype:
            a, b = a.to(x.dtype), b.to(x.dtype)
        return a, b

    def _frozen_base(self) -> bool:
        return self.base_layer is None and not self.weight.requires_grad and (
            self.bias is None or not self.bias.requires_grad)

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else x.dtype  # what F.linear would compute in
        cast = [t if t is None or t.dtype == dtype else t.to(dtype) for t in (x, self.weight, self.bias)]
        x2 = cast[0].reshape(-1, self.in_features)  # (N, in)
        xd = self.dropout(x2) if isinstance(self.dropout, nn.Dropout) and self.training else None
        with torch.autocast(device, enabled=False):
            y = FusedLora.apply(x2, xd, cast[1], cast[2], self.lora_a.to(dtype), self.lora_b.to(dtype), self.scaling)
        return y.reshape(*x.shape[:-1], self.out_features)

    @torch.no_grad()
    def merge(self) -> None:
        if self.base_layer is not None:
            raise ModelError("lora: cannot merge into a 4-bit/8-bit base without re-quantizing it (lossy); "
                             "merge on the full-precision base instead (peftlab merge does)")
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        r = self.lora_a.shape[0]
        return f"in={self.in_features}, out={self.out_features}, r={r}, scaling={self.scaling:g}, merged={self.merged}"


@dataclass(frozen=True)
class LoraConfig(MethodConfig):
    name = "lora"
    r: int = 8  # rank of the update
    alpha: float = 16.0  # scale numerator: update is (alpha / r) B A
    dropout: float = 0.0  # dropout on the LoRA branch's input
    targets: tuple[str, ...] = ("q", "v")  # roles, leaf names, "all-linear" or "re:<regex>"
    stacks: Optional[tuple[str, ...]] = None  # e.g. ("encoder",); None = every stack
    init: Literal["kaiming", "gaussian"] = "kaiming"  # init of A (B is always zero)
    rslora: bool = False  # scale by alpha / sqrt(r)

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        from peftlab.config import positive

        positive(self, "alpha")  # alpha <= 0 scales the update to nothing (or flips it)
        if not self.targets:
            raise ValueError("targets must name at least one module")
        if isinstance(self.targets, str):  # a bare string would be iterated char by char
            raise ValueError(f"targets must be a list of module names, got the string {self.targets!r}")
        if self.init not in ("kaiming", "gaussian"):
            raise ValueError(f"init must be 'kaiming' or 'gaussian', got {self.init!r}")

    cannot_merge = None  # W + (alpha / r) B A is a weight of the same shape

    def describe(self) -> str:
        return f"LoRA r={self.r}"

    def merge_into_base(self, model: nn.Module, family) -> None:
        """Fold every LoRA update into its base weight and put the plain layer back."""
        for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]:
            m.merge()
            unwrap_linear(model, name, m)

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict]:
        """peft's ``LORA`` adapter: ``lora_A`` / ``lora_B`` of every wrapped layer, the same scaling."""
        wrapped = {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}
        if any(m.merged for m in wrapped.values()):
            raise ModelError("peft export: unmerge LoRA first (the export holds A and B, not merged weights)")
        tensors = {}
        for name, m in wrapped.items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = m.lora_a.detach().cpu().contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = m.lora_b.detach().cpu().contiguous()
        config = {
            "peft_type": "LORA",
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "use_rslora": self.rslora,
            "target_modules": peft_targets(model, set(wrapped)),  # exactly the wrapped layers
            "bias": "none",
            "fan_in_fan_out": any(m.fan_in_fan_out for m in wrapped.values()),  # GPT-2's Conv1D
            "init_lora_weights": True,
        }
        return config, tensors

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        found = find_linears(model, family, self.targets, stacks=self.stacks, method="lora")
        wrapped = []
        for name, linear in found:
            plain = type(linear) is nn.Linear or is_fan_in_fan_out(linear) or is_quantized(linear)
            if isinstance(linear, LoraLinear) or not plain:
                raise ModelError(f"lora: {name} is already wrapped ({type(linear).__name__})")
            module = LoraLinear(linear, self.r, self.alpha, self.dropout, self.init, self.rslora)
            replace_module(model, name, module)
            wrapped.append(module)
        return wrapped


def lora_modules(model: nn.Module) -> list[LoraLinear]:
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def merge(model: nn.Module) -> int:
    """Fold every LoRA update into its base weight; returns how many layers were merged."""
    mods = lora_modules(model)
    for m in mods:
        m.merge()
    return len(mods)


def unmerge(model: nn.Module) -> int:
    mods = lora_modules(model)
    for m in mods:
        m.unmerge()
    return len(mods)
