"""Finding the linear layers a method targets, by role (``q``), leaf name (``wi_0``) or regex.

A "linear layer" is an ``nn.Linear`` (weight: out × in) or Hugging Face's ``Conv1D`` (GPT-2, GPT:
the same map ``y = x W + b`` with the weight stored transposed, in × out). Methods that wrap
linears use ``linear_dims`` and ``linear_forward`` so both kinds work, and keep the weight as it is
stored (base checkpoints still load strictly); ``is_fan_in_fan_out`` says which orientation it has
(peft's ``fan_in_fan_out``). A role that a family computes inside a fused layer (GPT-2's q, k, v in
``c_attn``) is refused with the fused layer named.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule


def is_fan_in_fan_out(module: nn.Module) -> bool:
    """A Hugging Face ``Conv1D``: a linear map whose weight is stored (in × out)."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def is_linear(module: nn.Module) -> bool:
    """A plain (unwrapped) linear layer: ``nn.Linear`` or ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_fan_in_fan_out(module)


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear``, a ``Conv1D`` or a method's wrapper."""
    if is_fan_in_fan_out(module):
        return module.nx, module.nf
    return module.in_features, module.out_features


def linear_forward(x: torch.Tensor, weight: torch.Tensor, bias, fan_in_fan_out: bool) -> torch.Tensor:
    """``x W^T + b`` for an (out × in) weight, ``x W + b`` for a Conv1D's (in × out) one, computed
    exactly as ``nn.Linear`` / ``Conv1D`` compute it (so a wrapper is bit-identical at init)."""
    if not fan_in_fan_out:
        return torch.nn.functional.linear(x, weight, bias)
    out = torch.addmm(bias, x.view(-1, x.size(-1)), weight) if bias is not None else x.view(-1, x.size(-1)) @ weight
    return out.view(x.size()[:-1] + (weight.shape[1],))


def stack_of(name: str, family) -> str | None:
    """The stack (``encoder``, ``decoder``) whose blocks hold the module ``name``; None outside blocks."""
    for stack, prefix in family.stacks.items():
        if name.startswith(prefix + "."):
            return stack
    return None


def find_linears(
    model: nn.Module,
    family,
    targets: Sequence[str],
    *,
    stacks: Sequence[str] | None = None,
    method: str = "method",
) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every linear layer inside a block that ``targets`` selects.

    A target is a role of the family table (``q``, ``k``, ``v``, ``o``, ``ffn_in``, ``ffn_gate``,
    ``ffn_out``), ``all-linear``, a literal leaf name (``SelfAttention.q`` or ``q``), or
    ``re:<regex>`` matched against the full module name. ``nn.Linear`` and ``Conv1D`` both count.
    A model without a family table (``peftlab.models.generic``) has no roles: names and regexes only.
    """
    for s in stacks or ():
        if s not in family.stacks:
            raise ModelError(f"{method}: unknown stack {s!r} for {family.name} (has: {', '.join(family.stacks)})")
    leaves, patterns, all_linear = set(), [], False
    for t in targets:
        if t in family.fused_roles:
            fused = family.fused_roles[t]
            raise ModelError(
                f"{method}: {family.name} has no separate {t!r} layer: it computes "
                f"{', '.join(r for r, f in family.fused_roles.items() if f == fused)} in one fused layer "
                f"{fused!r}; target it whole with targets: [{fused}] (or pick other roles: "
                f"{', '.join(family.linear_roles)})")
        if t == "all-linear":
            all_linear = True
        elif t.startswith("re:"):
            patterns.append(re.compile(t[3:]))
        elif t in family.linear_roles:
            leaves.update(family.leaf_names(t))
        else:
            leaves.add(t)
    found, block_linears, inside = [], [], []
    for name, module in model.named_modules():
        if any(name.startswith(a) for a in inside):
            continue  # a method's own layers (an adapter's down/up) are never targets
        wrapped = isinstance(module, AdapterModule)
        if wrapped:
            inside.append(name + ".")
        stack = stack_of(name, family)
        # a linear that a method already wrapped (LoRA, IA3) stays a target: a second wrapper is refused
        if stack is None or not (is_linear(module) or wrapped and hasattr(module, "in_features")):
            continue
        block_linears.append(name)
        if stacks is not None and stack not in stacks:
            continue
        if all_linear or any(name == l or name.endswith("." + l) for l in leaves) or any(
            p.fullmatch(name) for p in patterns
        ):
            found.append((name, module))
    if not found:
        existing = sorted({n.rsplit(".", 1)[-1] for n in block_linears})
        roles = ", ".join(f"{r}={'/'.join(v)}" for r, v in family.linear_roles.items())
        how = f"roles: {roles}" if family.table else (
            "it has no peftlab family table, so name them by leaf name, re:<regex> or all-linear; roles "
            "such as q, v mean nothing here")
        raise ModelError(
            f"{method}: targets {list(targets)} match no linear layer of this {family.name} model; "
            f"linear layers are named: {', '.join(existing)} ({how})"
        )
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def peft_targets(model: nn.Module, names: set[str]) -> list[str] | str:
    """HF peft's ``target_modules`` for exactly the layers ``names``: their leaf names where those pick
    exactly them (peft matches by suffix), else an exact regex."""
    import re

    from peftlab.methods.base import AdapterModule

    leaves = {n.rsplit(".", 1)[-1] for n in names}
    same_leaf = {n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in leaves
                 and (isinstance(m, (nn.Linear, AdapterModule)) or is_fan_in_fan_out(m))}
    if same_leaf == names:
        return sorted(leaves)
    return "(" + "|".join(re.escape(n) for n in sorted(names)) + ")" if names else []


def unwrap_linear(model: nn.Module, name: str, wrapper: nn.Module) -> None:
    """Put back the plain layer a wrapper holds (its ``weight`` and ``bias``, as merged): ``nn.Linear``,
    or GPT-2's ``Conv1D`` where the wrapper is ``fan_in_fan_out``."""
    from transformers.pytorch_utils import Conv1D

    if wrapper.fan_in_fan_out:
        linear = Conv1D(wrapper.out_features, wrapper.in_features)
    else:
        linear = nn.Linear(wrapper.in_features, wrapper.out_features, bias=wrapper.bias is not None,
                           device=wrapper.weight.device, dtype=wrapper.weight.dtype)
    linear.weight, linear.bias = wrapper.weight, wrapper.bias
    replace_module(model, name, linear)

