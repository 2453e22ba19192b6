"""IA3: Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning" (NeurIPS 2022, arXiv:2205.05638), (IA)³ = Infused Adapter by Inhibiting and Amplifying
Inner Activations.

Learned vectors rescale the attention keys and values and the FFN's inner activations::

    k = l_k ⊙ (W_k x),   v = l_v ⊙ (W_v x),   FFN(x) = W_out (l_ff ⊙ act(x))
    l_k, l_v: (d_k·heads,)   l_ff: (d_ff,)   all start at 1, so the model starts as the base model

Each targeted linear is wrapped in place (docs/design.md, hook point 1): an output-scaled layer computes
``F.linear(x, W, b) * l`` and an input-scaled ("feedforward") layer ``F.linear(x * l, W, b)``, with
no copy of ``W``. ``weight``/``bias`` keep their names, so base checkpoints load strictly. The
targets are HF peft's defaults (T5: k, v, wo; LLaMA: k_proj, v_proj, down_proj — self- and
cross-attention); ``merge`` folds l into W (rows for output scaling, columns for input scaling), as
``peft``'s ``merge_and_unload`` does, and ``export.py`` writes peft's IA3 format. A GPT-2 ``Conv1D``
(weight stored in × out) works the same way: its base map is computed as ``Conv1D`` computes it,
and merging scales its columns for outputs, its rows for inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from peftlab.config import Alias, FieldError
from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule, MethodConfig, peft_modules
from peftlab.methods.lora import is_quantized
from peftlab.methods.hooks.targets import (find_linears, is_fan_in_fan_out, linear_dims, linear_forward, peft_targets,
                                          replace_module, unwrap_linear)


class IA3Linear(AdapterModule):
    def __init__(self, base: nn.Module, feedforward: bool):
        super().__init__()
        self.in_features, self.out_features = linear_dims(base)
        self.fan_in_fan_out = is_fan_in_fan_out(base)  # a Conv1D: W is stored (in, out)
        self.weight, self.bias = base.weight, base.bias  # frozen, original names
        self.feedforward = feedforward  # scale the input (FFN activations), else the output
        n = self.in_features if feedforward else self.out_features
        self.ia3_l = nn.Parameter(torch.ones(n, device=base.weight.device))  # (in,) or (out,)
        self.merged = False

    def adapter_parameters(self):
        return iter((self.ia3_l,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return linear_forward(x, self.weight, self.bias, self.fan_in_fan_out)
        l = self.ia3_l if self.ia3_l.dtype == x.dtype else self.ia3_l.to(x.dtype)
        if self.feedforward:
            return linear_forward(x * l, self.weight, self.bias, self.fan_in_fan_out)
        y = linear_forward(x, self.weight, self.bias, self.fan_in_fan_out)
        return y * (l if l.dtype == y.dtype else self.ia3_l.to(y.dtype))  # autocast: y is bf16

    def _scale(self, l: torch.Tensor) -> None:
        l = l.to(self.weight.dtype)
        if self.feedforward:  # the input axis: columns of (out, in), rows of a Conv1D's (in, out)
            self.weight.mul_(l[:, None] if self.fan_in_fan_out else l[None, :])
        else:  # the output axis
            self.weight.mul_(l[None, :] if self.fan_in_fan_out else l[:, None])
            if self.bias is not None:
                self.bias.mul_(l.to(self.bias.dtype))

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self._scale(self.ia3_l)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Divide l back out (exact only up to rounding, and impossible where l = 0)."""
        if self.merged:
            if (self.ia3_l == 0).any():
                raise ModelError("ia3: cannot unmerge a vector with zeros (the scaled weights are lost)")
            self._scale(1.0 / self.ia3_l)
            self.merged = False

    def extra_repr(self) -> str:
        scaled = "input" if self.feedforward else "output"
        return f"in={self.in_features}, out={self.out_features}, scales={scaled}, merged={self.merged}"


@dataclass(frozen=True)
class IA3Config(MethodConfig):
    name = "ia3"
    # HF peft's names for the same fields (IA3Config(target_modules=[...], feedforward_modules=[...]))
    aliases = {"target_modules": Alias("targets", peft_modules), "feedforward_modules": Alias("feedforward", peft_modules)}
    lr_grid = (1e-3, 3e-3, 1e-2, 3e-2)  # one scale per channel: larger steps (the paper: 3e-3)
    targets: tuple[str, ...] = ("k", "v", "ffn_out")  # roles, leaf names or "re:<regex>"
    feedforward: tuple[str, ...] = ("ffn_out",)  # targets whose input is scaled (the rest: output)
    stacks: Optional[tuple[str, ...]] = None  # e.g. ("encoder",); None = every stack

    def __post_init__(self):
        for name in ("targets", "feedforward"):
            if isinstance(getattr(self, name), str):
                raise FieldError(name, f"{name} must be a list of module names, got the string {getattr(self, name)!r}")
        if not self.targets:
            raise FieldError("targets", "targets must name at least one module")
        if "all-linear" in self.targets:
            raise FieldError("targets", "targets: ia3 scales named layers; 'all-linear' is not supported")
        stray = [f for f in self.feedforward if f not in self.targets and not f.startswith("re:")]
        if stray:  # a regex's layers are checked when applied
            raise FieldError("feedforward", f"feedforward {stray} must also be in targets {list(self.targets)}")

    cannot_merge = None  # a scaled row or column of the weight is a weight

    def describe(self) -> str:
        return "IA3"

    def merge_into_base(self, model: nn.Module, family) -> None:
        """Fold every IA3 vector into its base weight and put the plain layer back."""
        for name, m in list(ia3_modules(model).items()):
            m.merge()
            unwrap_linear(model, name, m)

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict]:
        return ia3_peft_form(model)

    @classmethod
    def from_peft(cls, config: dict, tensors: dict, family) -> tuple["IA3Config", dict] | None:
        """peft's ``IA3`` adapter as IA3 on exactly the layers it holds ``ia3_l`` for (by full module
        name), those peft's ``feedforward_modules`` selects scaling their input."""
        from peftlab.methods.peft_import import by_module, peft_matches, refuse

        if config.get("peft_type") != "IA3" or cls.name != "ia3":  # a subclass reads its own form
            return None
        refuse(config, "ia3", modules_to_save=None, exclude_modules=None)
        layers = {n: t["ia3_l"] for n, t in by_module(tensors, ("ia3_l",), "ia3").items()}
        ff = tuple(sorted(n for n in layers if peft_matches(n, config.get("feedforward_modules"))))
        for n, t in layers.items():  # peft stores (1, in) for an input scale, (out, 1) for an output scale
            if t.dim() != 2 or t.shape[0 if n in ff else 1] != 1:
                raise ModelError(f"import ia3: {n}: ia3_l of shape {tuple(t.shape)} is not peft's "
                                 f"{'(1, in)' if n in ff else '(out, 1)'}")
        weights = {f"{n}.ia3_l": t.reshape(-1) for n, t in layers.items()}
        return cls(targets=tuple(sorted(layers)), feedforward=ff), weights

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        found = find_linears(model, family, self.targets, stacks=self.stacks, method="ia3")
        ff = {n for n, _ in find_linears(model, family, self.feedforward, stacks=self.stacks, method="ia3")} \
            if self.feedforward else set()
        stray = sorted(ff - {n for n, _ in found})
        if stray:
            raise ModelError(f"ia3: feedforward layers must also be targets; {', '.join(stray[:3])} is not")
        wrapped = []
        for name, linear in found:
            if is_quantized(linear):
                raise ModelError(f"ia3: {name} is a 4-bit/8-bit layer; ia3 needs a full-precision base "
                                 f"(model.quantize: none)")
            if type(linear) is not nn.Linear and not is_fan_in_fan_out(linear):
                raise ModelError(f"ia3: {name} is already wrapped by another method ({type(linear).__name__})")
            module = IA3Linear(linear, feedforward=name in ff)
            replace_module(model, name, module)
            wrapped.append(module)
        return wrapped


def ia3_modules(model: nn.Module) -> dict[str, IA3Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, IA3Linear)}


def ia3_peft_form(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """HF peft's IA3 ``adapter_config.json`` fields and ``adapter_model.safetensors`` tensors."""
    wrapped = ia3_modules(model)
    if any(m.merged for m in wrapped.values()):
        raise ModelError("peft export: unmerge IA3 first (the export holds the vectors, not merged weights)")
    tensors = {f"base_model.model.{n}.ia3_l": (m.ia3_l[None, :] if m.feedforward else m.ia3_l[:, None])
               .detach().cpu().contiguous() for n, m in wrapped.items()}
    config = {
        "peft_type": "IA3",
        "target_modules": peft_targets(model, set(wrapped)),
        "feedforward_modules": peft_targets(model, {n for n, m in wrapped.items() if m.feedforward}),
        "fan_in_fan_out": any(m.fan_in_fan_out for m in wrapped.values()),
        "init_ia3_weights": True,
        "modules_to_save": None,
    }
    return config, tensors
