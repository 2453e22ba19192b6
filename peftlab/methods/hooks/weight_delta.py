"""Linear layers whose weight a method reparametrises (hook point 1, beside ``targets.py``).

``WeightLinear`` is the wrapper LoHa, LoKr, VeRA, AdaLoRA and OFT build on. The frozen ``W`` and
``b`` keep their names (base checkpoints still load strictly); the method supplies the adapted map:
by default an additive update ``h = W x + b + ΔW x`` from ``delta()`` (out × in), or any cheaper
``update(x)`` with the same value (VeRA, AdaLoRA never build ΔW), or a whole ``forward`` (OFT
rotates the input). ``merge`` folds the method into ``W`` through ``merged_weight`` and ``unmerge``
takes it out through ``unmerged_weight``, both on ``W`` as (out × in): a GPT-2 ``Conv1D``'s (in × out)
weight is turned around before and after. ``wrap_linears`` wraps a config's targets, refusing a
layer another method wrapped and a 4-/8-bit one by name; ``merge_wrapped`` folds every wrapper of
one class and puts the plain layers back.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule
from peftlab.methods.hooks.targets import (find_linears, is_fan_in_fan_out, linear_dims, linear_forward,
                                          replace_module, unwrap_linear)


def like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` in ``x``'s dtype where autocast will not cast it (fp32 adapter tensors, bf16 input)."""
    if t.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        return t.to(x.dtype)
    return t


class WeightLinear(AdapterModule):
    """A frozen linear layer (``nn.Linear`` or ``Conv1D``) with a method's update on its weight."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.in_features, self.out_features = linear_dims(base)
        self.fan_in_fan_out = is_fan_in_fan_out(base)  # a Conv1D: W is stored (in, out)
        self.weight, self.bias = base.weight, base.bias  # frozen, original names
        self.merged = False

    def adapter_parameters(self):
        """Every parameter of the wrapper but the frozen layer's own."""
        frozen = {id(self.weight), id(self.bias)}
        return iter(p for p in self.parameters() if id(p) not in frozen)

    def delta(self) -> torch.Tensor:
        """The additive update ΔW, (out × in)."""
        raise NotImplementedError

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """What the method adds to the frozen layer's output: ``ΔW x`` by default."""
        return F.linear(x, like(self.delta(), x))

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_forward(x, self.weight, self.bias, self.fan_in_fan_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_forward(x)
        return y if self.merged else y + self.update(x)

    def merged_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The weight (out × in) with the method folded in."""
        return w + self.delta().to(w.dtype)

    def unmerged_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The merged weight (out × in) with the method taken out again."""
        return w - self.delta().to(w.dtype)

    def oriented_weight(self) -> torch.Tensor:
        """``W`` as (out × in), whatever its stored layout."""
        return self.weight.T if self.fan_in_fan_out else self.weight

    def _store(self, w: torch.Tensor) -> None:
        self.weight.copy_((w.T if self.fan_in_fan_out else w).to(self.weight.dtype))

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self._store(self.merged_weight(self.oriented_weight()))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._store(self.unmerged_weight(self.oriented_weight()))
            self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, merged={self.merged}"


def wrap_linears(model: nn.Module, family, targets: Sequence[str], stacks, method: str,
                 make: Callable[[nn.Module], nn.Module]) -> list[nn.Module]:
    """Replace every plain linear layer ``targets`` selects by ``make(layer)``; a layer that another
    method already wrapped, or a 4-/8-bit one, is refused by name."""
    from peftlab.methods.lora import is_quantized

    wrapped = []
    for name, linear in find_linears(model, family, targets, stacks=stacks, method=method):
        if is_quantized(linear):
            raise ModelError(f"{method}: {name} is a 4-bit/8-bit layer; {method} needs a full-precision base "
                             f"(model.quantize: none)")
        if type(linear) is not nn.Linear and not is_fan_in_fan_out(linear):
            raise ModelError(f"{method}: {name} is already wrapped ({type(linear).__name__})")
        module = make(linear)
        replace_module(model, name, module)
        wrapped.append(module)
    return wrapped


def wrapped_modules(model: nn.Module, cls: type) -> dict[str, nn.Module]:
    """``{qualified name: module}`` of every ``cls`` wrapper in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, cls)}


def merge_wrapped(model: nn.Module, cls: type) -> None:
    """Fold every ``cls`` wrapper into its base weight and put the plain layer back."""
    for name, m in list(wrapped_modules(model, cls).items()):
        m.merge()
        unwrap_linear(model, name, m)


def refuse_merged(wrapped: dict, method: str) -> None:
    """peft export holds the method's own tensors: a merged model has them in its weights instead."""
    if any(m.merged for m in wrapped.values()):
        raise ModelError(f"peft export: unmerge {method} first (the export holds its tensors, not merged weights)")


def check_targets(targets) -> None:
    """A method's ``targets``: a non-empty list of names (a bare string would be read letter by letter)."""
    from peftlab.config import FieldError

    if isinstance(targets, str) or not targets:
        raise FieldError("targets", f"targets must be a non-empty list of module names, got {targets!r}")


def check_rank(cfg) -> None:
    """A low-rank method's ``r`` (>= 1) and ``alpha`` (> 0)."""
    from peftlab.config import FieldError, positive

    if cfg.r < 1:
        raise FieldError("r", f"r must be >= 1, got {cfg.r}")
    positive(cfg, "alpha")
