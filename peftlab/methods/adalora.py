"""AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (Zhang et al., ICLR 2023,
arXiv:2303.10512).

Each update is kept in SVD form, and the rank is spent where it matters::

    h = W x + b + (α / r) P Λ Q dropout(x)      Q: (r × in), Λ = diag(λ): (r,), P: (out × r)
    loss = task loss + γ Σ_layers (‖P ᵀP − I‖_F + ‖Q Qᵀ − I‖_F) / (2 · layers)    (orthogonality)

λ starts at 0 (the model starts as the base), P and Q at N(0, 0.02²). After every optimizer step
each entry of P, λ, Q gets a smoothed sensitivity I = |θ · ∂L/∂θ| (EMA β₁) and uncertainty
U = |I − Ī| (EMA β₂); triplet i of a layer scores S_i = s(λ_i) + mean_j s(Q_ij) + mean_j s(P_ji),
s = Ī · Ū. The budget (triplets kept over all layers) stays at layers · r for ``tinit`` steps,
falls as a cubic to layers · ``target_r`` by step T − ``tfinal``, and every ``delta_t`` steps the λ
of the lowest-scoring triplets are set to 0. From step T − ``tfinal`` on the mask is fixed and
re-applied after every step. T is ``total_step``, or the run's ``train.max_steps``.

This is peft's RankAllocator step for step (its scale α / (r + 1e-5), its 0-based step index, its
mask from step T − tfinal), run by the training loop through the method hook ``StepHook``
(``step_hook``): ``extra_loss`` is the regulariser, ``after_step`` the allocation. A masked λ stays
in the adapter as 0, so save, load, merge and peft export need nothing more. A run resumed from a
checkpoint restarts the importance averages (they are training state the checkpoint does not hold);
after T − tfinal its fixed mask is read back from the λ that are 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.config import FieldError
from peftlab.errors import ConfigError
from peftlab.methods.base import MethodConfig, StepHook
from peftlab.methods.hooks.targets import peft_targets
from peftlab.methods.hooks.weight_delta import (WeightLinear, check_targets, like, merge_wrapped, refuse_merged,
                                                wrap_linears, wrapped_modules)


class SVDLinear(WeightLinear):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float, config: "AdaLoraConfig"):
        super().__init__(base)
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.randn(r, self.in_features, device=device) * 0.02)  # Q: (r, in)
        self.lora_e = nn.Parameter(torch.zeros(r, 1, device=device))  # Λ: (r, 1)
        self.lora_b = nn.Parameter(torch.randn(self.out_features, r, device=device) * 0.02)  # P: (out, r)
        self.scaling = alpha / (r + 1e-5)  # peft's α / (ranknum + 1e-5)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.__dict__["config"] = config  # which AdaLoRA this layer belongs to (its step hook's)

    def adapter_parameters(self):
        return iter((self.lora_a, self.lora_e, self.lora_b))

    def lora_b_parameters(self):
        return iter((self.lora_b,))

    def update(self, x: torch.Tensor) -> torch.Tensor:
        qe = like(self.lora_a * self.lora_e, x)  # Λ Q: (r, in)
        return F.linear(F.linear(self.dropout(x), qe), like(self.lora_b, x)) * self.scaling

    def delta(self) -> torch.Tensor:
        return self.lora_b @ (self.lora_a * self.lora_e) * self.scaling  # (out, in)


class RankAllocator(StepHook):
    """AdaLoRA's regulariser and rank allocation over the layers of one config."""

    def __init__(self, config: "AdaLoraConfig", layers: list[SVDLinear]):
        self.config, self.layers = config, layers
        self.init_budget = sum(m.lora_e.shape[0] for m in layers)
        self.target_budget = config.target_r * len(layers)
        self.ema_ipt: dict[int, torch.Tensor] = {}  # id(param) -> Ī
        self.ema_unc: dict[int, torch.Tensor] = {}  # id(param) -> Ū
        self.kept: list[torch.Tensor] | None = None  # the fixed mask from T - tfinal on

    def extra_loss(self) -> torch.Tensor | None:
        if not self.config.orth_reg_weight:
            return None
        terms = []
        for m in self.layers:
            for cov in (m.lora_a @ m.lora_a.T, m.lora_b.T @ m.lora_b):  # (r, r) each
                terms.append(torch.linalg.norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)))
        return self.config.orth_reg_weight * torch.stack(terms).sum() / len(terms)

    def after_step(self, step: int, total_steps: int | None) -> None:
        c = self.config
        total = c.total_step or total_steps
        if total is None:
            raise ConfigError("adalora: its budget schedule is in steps; give total_step, or train.max_steps")
        if c.tinit >= total - c.tfinal:
            raise ConfigError(f"adalora: tinit ({c.tinit}) must end before the final phase starts at step "
                              f"{total} - tfinal ({c.tfinal}) = {total - c.tfinal}")
        final = total - c.tfinal
        if step < final:
            self._update_importance()
            budget, mask = self._budget(step, total)
            if mask:
                self._mask_to(budget)
        elif step == final:
            self.kept = self._mask_to(self.target_budget)
            self.ema_ipt, self.ema_unc = {}, {}
        else:
            if self.kept is None:  # resumed after the allocation ended: the mask is the λ that are 0
                self.kept = [(m.lora_e != 0).view(-1) for m in self.layers]
            with torch.no_grad():
                for m, keep in zip(self.layers, self.kept):
                    m.lora_e.masked_fill_(~keep.view(-1, 1), 0.0)

    def _budget(self, step: int, total: int) -> tuple[int, bool]:
        c = self.config
        if step <= c.tinit:
            return self.init_budget, False
        left = 1 - (step - c.tinit) / (total - c.tfinal - c.tinit)
        return int((self.init_budget - self.target_budget) * left ** 3 + self.target_budget), step % c.delta_t == 0

    @torch.no_grad()
    def _update_importance(self) -> None:
        b1, b2 = self.config.beta1, self.config.beta2
        for m in self.layers:
            for p in m.adapter_parameters():
                if p.grad is None:
                    continue
                ipt = (p * p.grad).abs()
                avg = self.ema_ipt.get(id(p), torch.zeros_like(p)) * b1 + (1 - b1) * ipt
                self.ema_unc[id(p)] = self.ema_unc.get(id(p), torch.zeros_like(p)) * b2 + (1 - b2) * (ipt - avg).abs()
                self.ema_ipt[id(p)] = avg

    def _score(self, p: torch.Tensor) -> torch.Tensor:
        return self.ema_ipt.get(id(p), torch.zeros_like(p)) * self.ema_unc.get(id(p), torch.zeros_like(p))

    @torch.no_grad()
    def _mask_to(self, budget: int) -> list[torch.Tensor]:
        """Zero the λ of the lowest-scoring triplets so that ``budget`` are left; the kept ones per layer."""
        scores = [self._score(m.lora_e).view(-1) + (self._score(m.lora_a).mean(dim=1)
                                                    + self._score(m.lora_b).mean(dim=0)) for m in self.layers]
        cut = self.init_budget - budget
        if cut <= 0:
            return [torch.ones_like(s, dtype=torch.bool) for s in scores]
        threshold = torch.kthvalue(torch.cat(scores), k=cut).values
        kept = [s > threshold for s in scores]
        for m, keep in zip(self.layers, kept):
            m.lora_e.masked_fill_(~keep.view(-1, 1), 0.0)
        return kept


@dataclass(frozen=True)
class AdaLoraConfig(MethodConfig):
    name = "adalora"
    r: int = 12  # initial rank of every update (peft's init_r)
    target_r: int = 8  # average rank left after the allocation
    alpha: float = 32.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the update's input
    targets: tuple[str, ...] = ("all-linear",)  # the paper adapts every weight matrix
    stacks: Optional[tuple[str, ...]] = None  # e.g. ("encoder",); None = every stack
    tinit: int = 0  # steps at the full budget before it falls
    tfinal: int = 0  # steps at the end with the allocation fixed
    delta_t: int = 1  # steps between two allocations (peft's deltaT)
    beta1: float = 0.85  # EMA of the sensitivity
    beta2: float = 0.85  # EMA of its uncertainty
    orth_reg_weight: float = 0.5  # γ, the orthogonality regulariser's weight
    total_step: Optional[int] = None  # T; None = the run's train.max_steps

    def __post_init__(self):
        from peftlab.config import at_least

        at_least(self, 1, "r", "target_r", "delta_t", "total_step")
        at_least(self, 0, "tinit", "tfinal", "orth_reg_weight", "dropout")
        if not self.alpha > 0:
            raise FieldError("alpha", f"alpha must be > 0, got {self.alpha}")
        if self.target_r > self.r:
            raise FieldError("target_r", f"target_r ({self.target_r}) must be <= r ({self.r})")
        for beta in ("beta1", "beta2"):
            if not 0 < getattr(self, beta) < 1:
                raise FieldError(beta, f"{beta} must be in (0, 1), got {getattr(self, beta)}")
        if self.dropout >= 1:
            raise FieldError("dropout", f"dropout must be in [0, 1), got {self.dropout}")
        check_targets(self.targets)

    cannot_merge = None  # W + (α/r) P Λ Q is a weight of the same shape

    def describe(self) -> str:
        return f"AdaLoRA r={self.r}→{self.target_r}"

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        return wrap_linears(model, family, self.targets, self.stacks, self.name,
                            lambda linear: SVDLinear(linear, self.r, self.alpha, self.dropout, self))

    def step_hook(self, model: nn.Module) -> RankAllocator:
        return RankAllocator(self, [m for m in model.modules() if isinstance(m, SVDLinear) and m.config is self])

    def merge_into_base(self, model: nn.Module, family) -> None:
        merge_wrapped(model, SVDLinear)

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict]:
        """peft's ``ADALORA`` adapter at full rank, the pruned λ as zeros (no ``rank_pattern`` needed)."""
        wrapped = wrapped_modules(model, SVDLinear)
        refuse_merged(wrapped, "AdaLoRA")
        tensors = {}
        for name, m in wrapped.items():
            for ours, theirs in (("lora_a", "lora_A"), ("lora_e", "lora_E"), ("lora_b", "lora_B")):
                tensors[f"base_model.model.{name}.{theirs}"] = getattr(m, ours).detach().cpu().contiguous()
        config = {
            "peft_type": "ADALORA", "init_r": self.r, "target_r": self.target_r, "lora_alpha": self.alpha,
            "lora_dropout": self.dropout, "target_modules": peft_targets(model, set(wrapped)),
            "tinit": self.tinit, "tfinal": self.tfinal, "deltaT": self.delta_t, "beta1": self.beta1,
            "beta2": self.beta2, "orth_reg_weight": self.orth_reg_weight,
            # peft insists on a schedule length even to load; it only matters to training there
            "total_step": self.total_step or self.tinit + self.tfinal + 1, "rank_pattern": None,
            "fan_in_fan_out": any(m.fan_in_fan_out for m in wrapped.values()), "bias": "none",
            "init_lora_weights": True,
        }
        return config, tensors
