"""LoRA: Low-Rank Adaptation of Large Language Models (Hu et al., 2021, arXiv:2106.09685).

A frozen linear map ``W`` (out × in) gets a trainable low-rank update::

    h = W x + b + (α / r) · B A dropout(x)        A: (r × in), B: (out × r)

``A`` starts Kaiming-uniform (or Gaussian), ``B`` starts at zero, so ``h = W x + b`` at init.
``merge`` folds ``(α/r) B A`` into ``W`` for zero inference latency; ``unmerge`` takes it out.
With ``rslora`` the scale is ``α / √r`` (Kalajdzievski, 2023). ``init: pissa`` / ``init: olora``
start ``B A`` at the principal part of ``W`` (its top-r SVD / QR) and keep ``W − (α/r) B₀ A₀`` as
the frozen base (``lora_init.py``: the equations, and why the adapter holds ``A₀``, ``B₀``);
DoRA (``dora.py``) subclasses the wrapper and config. The wrapper keeps ``weight`` and
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

from peftlab.config import Alias
from peftlab.errors import ModelError
from peftlab.kernels.lora import FusedLora
from peftlab.methods.base import AdapterModule, MethodConfig, peft_lora_init, peft_modules
from peftlab.methods.lora_init import INITS_FROM_WEIGHT, peft_rank_2r, principal_factors
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
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        # PiSSA / OLoRA (lora_init.py): the principal part s B0 A0 taken out of W, as frozen buffers
        self.register_buffer("lora_a0", None)  # (r, in)
        self.register_buffer("lora_b0", None)  # (out, r)
        if init in INITS_FROM_WEIGHT:
            self._init_from_weight(init, r)
        elif init == "gaussian":
            nn.init.normal_(self.lora_a, std=1.0 / r)
        else:
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def _init_from_weight(self, init: str, r: int) -> None:
        if self.base_layer is not None:
            raise ModelError(f"lora: init {init} decomposes the base weight; a 4-bit/8-bit base cannot be "
                             f"decomposed here (model.quantize: none)")
        if r > min(self.in_features, self.out_features):
            raise ModelError(f"lora: init {init} needs r <= min(in, out) = "
                             f"{min(self.in_features, self.out_features)}, got r={r}")
        a0, b0 = principal_factors(self.oriented_weight(), r, self.scaling, init)
        with torch.no_grad():
            self.lora_a.copy_(a0)
            self.lora_b.copy_(b0)
        self.lora_a0, self.lora_b0 = a0.to(self.lora_a.device), b0.to(self.lora_a.device)

    def adapter_parameters(self):
        return iter((self.lora_a, self.lora_b))

    def adapter_buffers(self):
        return iter(t for t in (self.lora_a0, self.lora_b0) if t is not None)

    def lora_b_parameters(self):
        return iter((self.lora_b,))

    def oriented_weight(self) -> torch.Tensor:
        """The frozen ``W`` as (out, in), whatever its stored layout."""
        return self.weight.T if self.fan_in_fan_out else self.weight

    def update_weight(self) -> torch.Tensor:
        """What the layer adds to ``W`` (out, in): ``s B A``, less ``s B0 A0`` under PiSSA / OLoRA."""
        delta = self.lora_b @ self.lora_a
        if self.lora_a0 is not None:
            delta = delta - self.lora_b0 @ self.lora_a0
        return delta * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The update in the base weight's own layout: (out, in), or (in, out) for a Conv1D."""
        delta = self.update_weight()  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def principal(self, x: torch.Tensor) -> torch.Tensor:
        """``s B0 A0 x``, the part of ``W x`` that PiSSA / OLoRA moved into the trained factors."""
        a0, b0 = self.lora_a0, self.lora_b0
        if not torch.is_autocast_enabled(x.device.type) and a0.dtype != x.dtype:
            a0, b0 = a0.to(x.dtype), b0.to(x.dtype)
        return F.linear(F.linear(x, a0), b0) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:  # the update is in the weight: the plain layer's work and nothing else
            return linear_forward(x, self.weight, self.bias, self.fan_in_fan_out)
        if self.fused and not self.fan_in_fan_out and self._frozen_base():
            y = self._fused_forward(x)
        else:
            a, b = self.factors(x)
            y = self.base_forward(x) + F.linear(F.linear(self.dropout(x), a), b) * self.scaling
        return y if self.lora_a0 is None else y - self.principal(x)  # W_res x = W x - s B0 A0 x

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
    # HF peft's names for the same fields (LoraConfig(lora_alpha=32) and `lora_alpha: 32` in YAML)
    aliases = {"lora_alpha": "alpha", "lora_dropout": "dropout", "use_rslora": "rslora",
               "target_modules": Alias("targets", peft_modules), "init_lora_weights": Alias("init", peft_lora_init)}
    r: int = 8  # rank of the update
    alpha: float = 16.0  # scale numerator: update is (alpha / r) B A
    dropout: float = 0.0  # dropout on the LoRA branch's input
    targets: tuple[str, ...] = ("q", "v")  # roles, leaf names, "all-linear" or "re:<regex>"
    stacks: Optional[tuple[str, ...]] = None  # e.g. ("encoder",); None = every stack
    # init of A (B = 0): kaiming, gaussian; or A, B from W itself, W keeping only the rest (lora_init.py):
    # pissa (top-r singular triplets), olora (first r columns of W's QR)
    init: Literal["kaiming", "gaussian", "pissa", "olora"] = "kaiming"
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
        if self.init not in ("kaiming", "gaussian", *INITS_FROM_WEIGHT):
            raise ValueError(f"init must be 'kaiming', 'gaussian', 'pissa' or 'olora', got {self.init!r}")

    cannot_merge = None  # W + (alpha / r) B A is a weight of the same shape

    def describe(self) -> str:
        return f"{_INIT_LABELS.get(self.init, 'LoRA')} r={self.r}"

    def layer(self, linear: nn.Module) -> LoraLinear:
        """The wrapper of one targeted layer (DoRA's config makes its own)."""
        return LoraLinear(linear, self.r, self.alpha, self.dropout, self.init, self.rslora)

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
        tensors, rank = {}, {"r": self.r, "lora_alpha": self.alpha}
        for name, m in wrapped.items():
            a, b = m.lora_a.detach(), m.lora_b.detach()
            if m.lora_a0 is not None:  # PiSSA / OLoRA: peft's own conversion to LoRA on the original W
                rank, a, b = peft_rank_2r(self.alpha, self.r, self.rslora, a, b, m.lora_a0, m.lora_b0)
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.cpu().contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.cpu().contiguous()
        config = {
            "peft_type": "LORA",
            **rank,
            "lora_dropout": self.dropout,
            "use_rslora": self.rslora,
            "target_modules": peft_targets(model, set(wrapped)),  # exactly the wrapped layers
            "bias": "none",
            "fan_in_fan_out": any(m.fan_in_fan_out for m in wrapped.values()),  # GPT-2's Conv1D
            "init_lora_weights": True,
        }
        return config, tensors

    @classmethod
    def from_peft(cls, config: dict, tensors: dict, family) -> tuple["LoraConfig", dict] | None:
        """peft's ``LORA`` adapter as LoRA on exactly the layers it holds ``lora_A`` / ``lora_B`` for (by
        full module name); DoRA is not plain LoRA (None: another method's form)."""
        from peftlab.methods.peft_import import by_module, refuse

        if config.get("peft_type") != "LORA" or config.get("use_dora") or cls.name != "lora":  # not a subclass's
            return None
        refuse(config, "lora", bias="none", lora_bias=False, use_qalora=False, modules_to_save=None,
               rank_pattern=None, alpha_pattern=None, layers_to_transform=None, exclude_modules=None,
               layer_replication=None, target_parameters=None, trainable_token_indices=None)
        if config.get("init_lora_weights") not in (None, True, False, "gaussian"):  # PiSSA, OLoRA...: W changed
            raise ModelError(f"import lora: init_lora_weights={config['init_lora_weights']!r} changed the base "
                             f"weights; convert the adapter to plain LoRA first (peft's "
                             f"path_initial_model_for_weight_conversion)")
        layers = by_module(tensors, ("lora_A.weight", "lora_B.weight"), "lora")
        cfg = cls(r=int(config["r"]), alpha=float(config.get("lora_alpha", 8)),
                  dropout=float(config.get("lora_dropout") or 0.0), targets=tuple(sorted(layers)),
                  rslora=bool(config.get("use_rslora")))
        out = {}
        for name, pair in layers.items():
            if set(pair) != {"lora_A.weight", "lora_B.weight"} or pair["lora_A.weight"].shape[0] != cfg.r:
                raise ModelError(f"import lora: {name}: expected lora_A (r={cfg.r} x in) and lora_B (out x r), got "
                                 f"{ {k: tuple(v.shape) for k, v in pair.items()} }")
            out[f"{name}.lora_a"], out[f"{name}.lora_b"] = pair["lora_A.weight"], pair["lora_B.weight"]
        return cfg, out

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        found = find_linears(model, family, self.targets, stacks=self.stacks, method=self.name)
        wrapped = []
        for name, linear in found:
            plain = type(linear) is nn.Linear or is_fan_in_fan_out(linear) or is_quantized(linear)
            if isinstance(linear, LoraLinear) or not plain:
                raise ModelError(f"{self.name}: {name} is already wrapped ({type(linear).__name__})")
            module = self.layer(linear)
            replace_module(model, name, module)
            wrapped.append(module)
        return wrapped


_INIT_LABELS = {"pissa": "PiSSA", "olora": "OLoRA"}


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
