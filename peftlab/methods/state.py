"""Applying methods to a model, and the record of what was applied (``PeftState``)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule, MethodConfig, StepHook
from peftlab.models.quantize import is_quantized_model, keep_trainable

_ATTR = "_peftlab_state"


@dataclass
class PeftState:
    """What ``apply_methods`` did to a model: the configs and each method's parameter names."""

    configs: list[MethodConfig]
    param_names: dict[str, list[str]] = field(default_factory=dict)  # method key -> param names
    total_params: int = 0
    # Counts frozen by fold_methods: the modules they count (prefix MLP) are no longer in the model.
    trained_counts: dict[str, int] | None = None
    family: Any = None  # the Family the methods were applied through (a table, or one inferred)

    def trainable_names(self) -> list[str]:
        return [n for names in self.param_names.values() for n in names]

    def counts(self, model: nn.Module) -> dict[str, int]:
        if self.trained_counts is not None:
            return dict(self.trained_counts)
        params = dict(model.named_parameters())
        return {k: sum(params[n].numel() for n in names) for k, names in self.param_names.items()}

    def trainable_params(self, model: nn.Module) -> int:
        return sum(self.counts(model).values())

    def per_task(self, model: nn.Module) -> dict | None:
        """Trainable parameters shared by all tasks and owned by each (``MethodConfig.task_params``):
        ``{"shared": n, "by_task": [n_0, n_1, ...]}``; ``None`` when no method keeps any per task."""
        owned = [c.task_params(model) for c in self.configs]
        if all(o is None for o in owned):
            return None
        by_task = [sum(col) for col in itertools.zip_longest(*[o for o in owned if o is not None], fillvalue=0)]
        return {"shared": self.trainable_params(model) - sum(by_task), "by_task": by_task}

    def summary(self, model: nn.Module) -> str:
        n, total = self.trainable_params(model), sum(logical_numel(p) for p in model.parameters())
        parts = ", ".join(f"{k} {v:,}" for k, v in self.counts(model).items())
        tail = f"  [{parts}]" if parts else ""
        return f"trainable {n:,} / {total:,} ({100 * n / max(total, 1):.2f}%){tail}"


def logical_numel(p) -> int:
    """Elements of the weight a parameter stands for (a 4-bit weight packs two per byte)."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return math.prod(int(d) for d in shape) if shape is not None else p.numel()


def peft_state(model: nn.Module) -> PeftState | None:
    return getattr(model, _ATTR, None)


def adapter_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen tensors the methods save beside their parameters (``AdapterModule.adapter_buffers``:
    PiSSA's initial factors, VeRA's shared pair), by name; a shared tensor once."""
    declared = {id(b) for m in model.modules() if isinstance(m, AdapterModule) for b in m.adapter_buffers()}
    return {n: b for n, b in model.named_buffers() if id(b) in declared}


def step_hooks(model: nn.Module) -> list[StepHook]:
    """What the applied methods do around each optimizer step (``MethodConfig.step_hook``)."""
    state = peft_state(model)
    hooks = [c.step_hook(model) for c in state.configs] if state is not None else []
    return [h for h in hooks if h is not None]


def forget_methods(model: nn.Module) -> None:
    """Drop the record of applied methods (``merged_model``: the model is a plain one again)."""
    if hasattr(model, _ATTR):
        delattr(model, _ATTR)


def _method_key(config: MethodConfig, taken: dict) -> str:
    key, i = config.name, 2
    while key in taken:
        key, i = f"{config.name}#{i}", i + 1
    return key


def _inject(model: nn.Module, config: MethodConfig, family, owned: dict) -> list[nn.Parameter]:
    if config.trains_base:
        if is_quantized_model(model):
            raise ModelError(f"{config.name}: a 4-bit/8-bit base cannot be trained in full (its weights are "
                             f"integers); use model.quantize: none, or a PEFT method")
        return [p for p in model.parameters() if id(p) not in owned]
    modules = config.apply(model, family)
    return [p for m in modules if isinstance(m, AdapterModule) for p in m.adapter_parameters()]


_MODULE_DICTS = ("_modules", "_parameters", "_buffers", "_forward_hooks", "_forward_hooks_with_kwargs",
                 "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
                 "_backward_hooks", "_backward_pre_hooks")


def _snapshot(model: nn.Module) -> list:
    """Shallow copies of every module's children/params/hooks tables, and requires_grad flags:
    enough to undo what methods do (replace modules, add modules/params, register hooks)."""
    from peftlab.methods.hooks import attention

    tables = [(m, name, dict(getattr(m, name))) for m in model.modules() for name in _MODULE_DICTS
              if hasattr(m, name)]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    return [tables, flags, model, attention.snapshot(model)]


def _restore(snapshot: list) -> None:
    from peftlab.methods.hooks import attention

    tables, flags, model, attn = snapshot
    for module, name, saved in tables:
        table = getattr(module, name)
        table.clear()
        table.update(saved)
    for p, flag in flags:
        p.requires_grad_(flag)
    attention.restore(model, attn)  # extension tables and the attention implementation


def apply_methods(model: nn.Module, configs: Sequence[MethodConfig], family=None) -> PeftState:
    """Freeze ``model``, inject ``configs`` in order, make only their parameters trainable.

    ``model`` is any ``transformers`` model: one of a family table's types, or any other, whose
    family is inferred (``peftlab.models.generic``) and takes the methods that name their layers."""
    from peftlab.models.arch import family_for

    if peft_state(model) is not None:
        applied = ", ".join(c.name for c in peft_state(model).configs) or "none"
        raise ModelError(f"methods were already applied to this model ({applied}); start from a fresh base model")
    family = family or family_for(model)
    for config in configs:
        if config.families is not None and family.name not in config.families:
            raise ModelError(
                f"method {config.name!r} does not support the {family.name!r} family "
                f"(supported: {', '.join(config.families)})"
            )
        if not family.table and config.needs_table:
            raise ModelError(_needs_table(config, family))
    snapshot = _snapshot(model)
    try:
        model.requires_grad_(False)
        if is_quantized_model(model):
            keep_trainable(model)
        state = PeftState(configs=list(configs), family=family)
        owned: dict[int, str] = {}  # id(param) -> method key, to catch two methods claiming one param
        for config in configs:
            key = _method_key(config, state.param_names)
            params = _inject(model, config, family, owned)
            for p in params:
                if id(p) in owned:
                    raise ModelError(f"methods {owned[id(p)]!r} and {key!r} both claim one parameter")
                owned[id(p)] = key
                p.requires_grad_(True)
            state.param_names[key] = []
    except BaseException:
        _restore(snapshot)  # all or nothing: a failed apply leaves the model as it was given
        raise
    for name, p in model.named_parameters():
        if id(p) in owned:
            state.param_names[owned[id(p)]].append(name)
    state.total_params = sum(logical_numel(p) for p in model.parameters())
    setattr(model, _ATTR, state)
    return state


def _needs_table(config: MethodConfig, family) -> str:
    """Why ``config`` cannot go on a model without a family table, and what can."""
    from peftlab.methods.registry import get_method, method_names
    from peftlab.models.arch import table_types

    free = [n for n in method_names() if get_method(n).needs_table is None and get_method(n).families is None]
    return (f"method {config.name!r} needs {config.needs_table}, which only a peftlab family table gives (tables "
            f"cover {', '.join(table_types())}); this {family.name} model has none. Without a table, peftlab "
            f"applies the methods that work from the layers their config names: {', '.join(free)}")


def fold_methods(model: nn.Module) -> PeftState:
    """Fold every applied method into its inference form (``MethodConfig.fold``), in place, with
    identical outputs; call it after training, before ``save_adapter``, which then records the
    folded configs so ``load_adapter`` rebuilds the folded form. The model gets a new ``PeftState``
    (the one ``apply_methods`` returned keeps describing what was trained). Idempotent."""
    from peftlab.models.arch import family_for

    state = peft_state(model)
    if state is None:
        raise ModelError("fold_methods: no peftlab methods were applied to this model")
    family = state.family or family_for(model)
    if state.trained_counts is None:
        state.trained_counts = state.counts(model)  # the trained state keeps describing what was trained
    configs, names = list(state.configs), dict(state.param_names)
    for i, key in enumerate(state.param_names):
        folded = configs[i].fold(model, family)
        if folded is None:
            continue
        configs[i], modules = folded
        params = {id(p): p for m in modules if isinstance(m, AdapterModule) for p in m.adapter_parameters()}
        for p in params.values():
            p.requires_grad_(True)
        names[key] = [n for n, p in model.named_parameters() if id(p) in params]
    new = PeftState(configs=configs, param_names=names,
                    total_params=sum(logical_numel(p) for p in model.parameters()), family=family)
    setattr(model, _ATTR, new)
    return new
