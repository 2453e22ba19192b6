"""The implementations a train or inference case times, by name, all built on one base model.

Names: ``peftlab`` (the case's ``methods``), ``peftlab[VARIANT]`` (the same methods under other
TrainSpec options: ``variants``), ``peftlab:NAME`` (another peftlab method list: ``compare``), then
the reference: ``peft``, ``hf`` (the plain model trained in full), ``hf-stock`` (the plain model
untouched), and in a train case ``<reference>+compile``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from peftlab.lab.speed import build
from peftlab.lab.speed.spec import CaseSpec, peftlab_train_spec

COMPARE = "peftlab:"  # the prefix of a ``compare`` implementation's name


@dataclass
class Impl:
    name: str
    model: nn.Module  # the eager model (for the init-loss check and counting)
    methods: list = field(default_factory=list)  # peftlab's methods on it; [] for a reference
    loss_of: Optional[Callable[[dict], torch.Tensor]] = None  # train cases: the step's loss
    optimizer: Optional[torch.optim.Optimizer] = None  # train cases
    compiled: bool = False

    def batch(self, batch: dict) -> dict:
        """The keys of ``batch`` this implementation's model takes (``build.batch_for``)."""
        return build.batch_for(batch, self.methods)


def impl_names(case: CaseSpec) -> list[str]:
    names = ["peftlab", *(f"peftlab[{v}]" for v in case.variants), *(COMPARE + c for c in case.compare)]
    if case.reference != "none":
        compiled = case.compile_reference and case.kind == "train"
        names += [case.reference] + ([f"{case.reference}+compile"] if compiled else [])
    return names


def methods_of(case: CaseSpec, name: str) -> list:
    """peftlab's methods of implementation ``name``; [] for a reference."""
    if name.startswith(COMPARE):
        return list(case.compare[name[len(COMPARE):]])
    return list(case.methods) if name.startswith("peftlab") else []


def options_of(case: CaseSpec, name: str) -> dict:
    """The TrainSpec fields peftlab ran with (beyond the defaults), or the reference's compile flag."""
    if not name.startswith("peftlab"):
        return {"compile": name.endswith("+compile")}
    if name.startswith("peftlab["):
        return {**case.train, **case.variants[name[len("peftlab["):-1]]}
    return dict(case.train)


def build_model(name: str, base: build.Base, case: CaseSpec, copy: bool = True) -> nn.Module:
    """The model of implementation ``name`` on ``base`` (``copy``: see ``build.make_peftlab``)."""
    if name.startswith("peftlab"):
        return build.make_peftlab(base.model, methods_of(case, name), base.family, copy=copy,
                                  attention_hook=case.attention_hook)
    return build.make_reference(base.model, case, copy=copy)


def _mixed(precision: str) -> str:
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def build_impl(name: str, base: build.Base, case: CaseSpec, precision: str, lr: float, device,
               copy: bool = True) -> Impl:
    """One implementation of a train case, with its loss and AdamW (``copy``: see ``build.make_peftlab``)."""
    methods = methods_of(case, name)
    if name.startswith("peftlab"):
        from peftlab.train.fast import training_loss
        from peftlab.train.optim import make_optimizer

        spec = peftlab_train_spec({**options_of(case, name), "mixed_precision": _mixed(precision), "lr": lr})
        model = build_model(name, base, case, copy=copy)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, spec, device)
        return Impl(name, model, methods, training_loss(model, spec), optimizer, spec.compile)
    compiled = name.endswith("+compile")
    model = build_model(name, base, case, copy=copy)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, fused=device.type == "cuda")
    forward = torch.compile(model) if compiled else model
    return Impl(name, model, methods, lambda batch: forward(**batch).loss, optimizer, compiled)


def share_weights(impls: list[Impl]) -> dict[str, int]:
    """Give zero-initialised adapter tensors trained-looking values (LoRA's B nonzero), then copy
    peftlab's (``impls[0]``) into every implementation of the same method — the reference, the
    variants — so that they compute one function; returns how many tensors each got. A ``compare``
    implementation (other methods) keeps its own values."""
    for impl in impls:
        own = impl.name == "peftlab" or impl.name.startswith(COMPARE)  # the others get peftlab's values
        if own and not any(m.trains_base for m in impl.methods):
            build.perturb_zero_adapters(impl.model)
    ours = impls[0].model
    same = [i for i in impls[1:] if not i.name.startswith(COMPARE)]
    # the references first: aligning with peft may change ours (LLaMA-Adapter's per-head gates made
    # equal per layer), and peftlab's variants must then get those same values
    same.sort(key=lambda i: i.name.startswith("peftlab"))
    return {i.name: build.align_adapters(ours, i.model) for i in same}
