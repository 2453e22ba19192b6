"""Finding the linear layers a method targets, by role (``q``), leaf name (``wi_0``) or regex."""

from __future__ import annotations

import re
from typing import Sequence

from torch import nn

from peftlab.errors import ModelError


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
    found, block_linears = [], []
    for name, module in model.named_modules():
        stack = _stack_of(name, family)
        wrapped = _wrapped_linear(module)
        if stack is None or not (isinstance(module, nn.Linear) or wrapped):
            continue
        block_linears.append(name)
        if stacks is not None and stack not in stacks:
            continue
        if all_linear or any(name == l or name.endswith("." + l) for l in leaves) or any(
            p.fullmatch(name) for p in patterns
        ):
            if wrapped:  # another method already replaced this linear: say so rather than skip it
                by = getattr(module, "method", "") or type(module).__name__
                raise ModelError(f"{method}: {name} is already wrapped by {by} ({type(module).__name__}); "
                                 f"apply {method} before {by}, or target other layers")
            found.append((name, module))
    if not found:
        existing = sorted({n.rsplit(".", 1)[-1] for n in block_linears})
        roles = ", ".join(f"{r}={'/'.join(v)}" for r, v in family.linear_roles.items())
        raise ModelError(
            f"{method}: targets {list(targets)} match no linear layer of this {family.name} model; "
            f"linear layers are named: {', '.join(existing)} (roles: {roles})"
        )
    return found


def _wrapped_linear(module: nn.Module) -> bool:
    """A method's wrapper around a linear layer (LoRA's, LLaMA-Adapter v2's): linear-shaped, not nn.Linear."""
    return not isinstance(module, nn.Linear) and hasattr(module, "in_features") and hasattr(module, "weight")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
