"""Finding the linear layers a method targets, by role (``q``), leaf name (``wi_0``) or regex."""

from __future__ import annotations

import re
from typing import Sequence

from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule


def _stack_of(name: str, family) -> str | None:
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
) -> list[tuple[str, nn.Linear]]:
    """``(qualified name, module)`` of every ``nn.Linear`` inside a block that ``targets`` selects.

    A target is a role of the family table (``q``, ``k``, ``v``, ``o``, ``ffn_in``, ``ffn_gate``,
    ``ffn_out``), ``all-linear``, a literal leaf name (``SelfAttention.q`` or ``q``), or
    ``re:<regex>`` matched against the full module name.
    """
    for s in stacks or ():
        if s not in family.stacks:
            raise ModelError(f"{method}: unknown stack {s!r} for {family.name} (has: {', '.join(family.stacks)})")
    leaves, patterns, all_linear = set(), [], False
    for t in targets:
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
        stack = _stack_of(name, family)
        # a linear that a method already wrapped (LoRA, IA3) stays a target: a second wrapper is refused
        if stack is None or not (isinstance(module, nn.Linear) or wrapped and hasattr(module, "in_features")):
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
        raise ModelError(
            f"{method}: targets {list(targets)} match no linear layer of this {family.name} model; "
            f"linear layers are named: {', '.join(existing)} (roles: {roles})"
        )
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
