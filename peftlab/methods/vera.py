"""VeRA: Vector-based Random Matrix Adaptation (Kopiczko et al., 2024, arXiv:2310.11454).

One pair of frozen random matrices is shared by every adapted layer; each layer trains two
scaling vectors only::

    h = W x + b + Λ_b B Λ_d A dropout(x)      A: (r × in_max), B: (out_max × r), shared and frozen
    Λ_d = diag(d), d: (r,) = d_initial        Λ_b = diag(b), b: (out,) = 0   (so h = W x + b at init)

A layer of shape (out × in) uses the top-left block of the shared pair, ``A[:, :in]`` and
``B[:out, :]``, so one pair sized to the largest targeted layer serves all of them (as in peft).
A and B are Kaiming-uniform from a generator seeded with ``projection_seed``: the same values as
peft's ``projection_prng_key``. They are not trained, but they are saved with the adapter
(``adapter_buffers``, as peft's ``save_projection``): a fresh base with the adapter then gives
back the trained model without trusting another torch's random stream. Parameters per layer:
r + out. ``merge`` folds ``Λ_b B Λ_d A`` into W; ``to_peft`` writes peft's VeRA with its projections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.config import FieldError
from peftlab.methods.base import MethodConfig
from peftlab.methods.hooks.targets import find_linears, linear_dims, peft_targets
from peftlab.methods.hooks.weight_delta import (WeightLinear, check_targets, like, merge_wrapped, refuse_merged,
                                                wrap_linears, wrapped_modules)


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(-√(6 / fan_in), √(6 / fan_in)) drawn from ``generator`` (fan_in = shape[1])."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class SharedProjections(nn.Module):
    """The frozen random pair every VeRA layer of one config reads: ``a`` (r × in_max), ``b`` (out_max × r)."""

    def __init__(self, r: int, in_max: int, out_max: int, seed: int, device=None):
        super().__init__()
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.register_buffer("a", kaiming_uniform((r, in_max), g).to(device))
        self.register_buffer("b", kaiming_uniform((out_max, r), g).to(device))


class VeraLinear(WeightLinear):
    def __init__(self, base: nn.Module, projections: SharedProjections, dropout: float, d_initial: float,
                 owner: bool):
        super().__init__(base)
        r, device = projections.a.shape[0], base.weight.device
        if owner:  # the first layer holds the pair (saved once); the others only read it
            self.projections = projections
        else:
            self.__dict__["projections"] = projections
        self.vera_lambda_d = nn.Parameter(torch.full((r,), float(d_initial), device=device))  # d: (r,)
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.out_features, device=device))  # b: (out,)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def adapter_parameters(self):
        return iter((self.vera_lambda_d, self.vera_lambda_b))

    def adapter_buffers(self):
        return iter((self.projections.a, self.projections.b))

    def lora_b_parameters(self):
        return iter((self.vera_lambda_b,))  # the output side, zero at init (LoRA+'s B)

    def sliced(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.projections.a[:, : self.in_features], self.projections.b[: self.out_features]

    def update(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.sliced()
        h = F.linear(self.dropout(x), like(a, x))  # (..., r)
        y = F.linear(h * self.vera_lambda_d.to(h.dtype), like(b, h))  # (..., out)
        return y * self.vera_lambda_b.to(y.dtype)

    def delta(self) -> torch.Tensor:
        a, b = self.sliced()
        return (self.vera_lambda_b[:, None] * b) @ (self.vera_lambda_d[:, None] * a)  # (out, in)


@dataclass(frozen=True)
class VeraConfig(MethodConfig):
    name = "vera"
    lr_grid = (1e-3, 3e-3, 1e-2, 3e-2)  # vectors only: larger steps (the paper: 1e-2 to 4e-2 on GLUE)
    r: int = 256  # rank of the shared pair (the paper: 256 to 1024; parameters grow by r per layer only)
    targets: tuple[str, ...] = ("q", "v")  # roles, leaf names, "all-linear" or "re:<regex>"
    stacks: Optional[tuple[str, ...]] = None  # e.g. ("encoder",); None = every stack
    dropout: float = 0.0  # dropout on the update's input
    d_initial: float = 0.1  # initial value of every d (the paper's best; b starts at 0)
    projection_seed: int = 0  # seed of the shared random pair (peft's projection_prng_key)

    def __post_init__(self):
        if self.r < 1:
            raise FieldError("r", f"r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise FieldError("dropout", f"dropout must be in [0, 1), got {self.dropout}")
        if not self.d_initial > 0:  # d = b = 0 would leave both vectors without a gradient
            raise FieldError("d_initial", f"d_initial must be > 0, got {self.d_initial}")
        if self.projection_seed < 0:
            raise FieldError("projection_seed", f"projection_seed must be >= 0, got {self.projection_seed}")
        check_targets(self.targets)

    cannot_merge = None  # W + Λ_b B Λ_d A is a weight of the same shape

    def describe(self) -> str:
        return f"VeRA r={self.r}"

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        found = find_linears(model, family, self.targets, stacks=self.stacks, method=self.name)
        dims = [linear_dims(m) for _, m in found]
        device = found[0][1].weight.device
        projections = SharedProjections(self.r, max(i for i, _ in dims), max(o for _, o in dims),
                                        self.projection_seed, device)
        made: list[VeraLinear] = []

        def make(linear):
            made.append(VeraLinear(linear, projections, self.dropout, self.d_initial, owner=not made))
            return made[-1]

        return wrap_linears(model, family, self.targets, self.stacks, self.name, make)

    def merge_into_base(self, model: nn.Module, family) -> None:
        merge_wrapped(model, VeraLinear)

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict]:
        """peft's ``VERA`` adapter with its projections saved (``save_projection``)."""
        wrapped = wrapped_modules(model, VeraLinear)
        refuse_merged(wrapped, "VeRA")
        first = next(iter(wrapped.values()))
        tensors = {"base_model.vera_A": first.projections.a.cpu().contiguous(),
                   "base_model.vera_B": first.projections.b.cpu().contiguous()}
        for name, m in wrapped.items():
            tensors[f"base_model.model.{name}.vera_lambda_b"] = m.vera_lambda_b.detach().cpu().contiguous()
            tensors[f"base_model.model.{name}.vera_lambda_d"] = m.vera_lambda_d.detach().cpu().contiguous()
        config = {
            "peft_type": "VERA",
            "r": self.r,
            "target_modules": peft_targets(model, set(wrapped)),
            "projection_prng_key": self.projection_seed,
            "save_projection": True,
            "vera_dropout": self.dropout,
            "d_initial": self.d_initial,
            "fan_in_fan_out": any(m.fan_in_fan_out for m in wrapped.values()),
            "bias": "none",
        }
        return config, tensors
