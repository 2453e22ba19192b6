"""The optimizer and its schedule: AdamW (or Adafactor) in parameter groups, LoRA+ rates, and the
learning-rate factor each step (linear warm-up, then linear decay to 0 at the end of the budget:
steps or seconds, whichever is further along)."""

from __future__ import annotations

import torch

from peftlab.errors import ConfigError


def lr_factor(step: int, elapsed: float, spec) -> float:
    """Warm-up then linear decay; progress is the larger of step and time fractions."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    fracs = []
    if spec.max_steps:
        fracs.append((step - spec.warmup_steps) / max(spec.max_steps - spec.warmup_steps, 1))
    if spec.max_seconds:
        fracs.append(elapsed / spec.max_seconds)
    return max(0.0, 1.0 - max(fracs, default=0.0))


def make_optimizer(params: list, spec, device: torch.device, model: torch.nn.Module | None = None
                   ) -> torch.optim.Optimizer:
    """AdamW (decay on matrices only), or Adafactor for T5 pretraining.

    AdamW leaves a T5 trained from scratch stuck at unigram loss, ignoring its encoder (seen here,
    and reported by nanoT5): T5's init spans std 1 (embeddings) to d^-0.5 (projections), and AdamW's
    uniform step size suits neither. Adafactor scales each update by the parameter's RMS.

    LoRA+ (``spec.loraplus_ratio``, Hayou et al., 2024, arXiv:2402.12354): the parameters that
    ``model``'s method modules declare as B factors (``AdapterModule.lora_b_parameters``) get their
    own groups at ratio × the rate; each group's ``lr_scale`` is what the schedule multiplies.
    """
    ratio = getattr(spec, "loraplus_ratio", None)
    fast = lora_b_ids(model, ratio) if ratio else set()
    groups = []  # the first two at the base rate, whatever they hold (the log reads the first)
    for scale, members in ((1.0, [p for p in params if id(p) not in fast]), (ratio, [p for p in params if id(p) in fast])):
        if members or not groups:
            groups += [{"params": [p for p in members if p.ndim >= 2], "weight_decay": spec.weight_decay,
                        "lr": spec.lr * scale, "lr_scale": scale},
                       {"params": [p for p in members if p.ndim < 2], "weight_decay": 0.0,
                        "lr": spec.lr * scale, "lr_scale": scale}]
    if spec.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=spec.lr, scale_parameter=True, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(groups, lr=spec.lr, fused=device.type == "cuda")


def lora_b_ids(model: torch.nn.Module | None, ratio: float) -> set[int]:
    """ids of the parameters LoRA+ steps at ``ratio`` × lr: those the model's method modules declare."""
    from peftlab.methods.base import AdapterModule

    if model is None:
        raise ValueError("train.loraplus_ratio: make_optimizer needs the model, whose methods declare their B factors")
    fast = {id(p) for m in model.modules() if isinstance(m, AdapterModule) for p in m.lora_b_parameters()}
    if not fast:
        raise ConfigError(f"train.loraplus_ratio: {ratio:g} asks for LoRA+, but none of this model's methods has B "
                          f"factors to step faster (LoRA, DoRA, PiSSA/OLoRA, AdaLoRA and VeRA have)")
    return fast
