"""What the methods' ``from_peft`` share: reading a peft adapter's tensor names, and refusing the
peft options a peftlab method has no form for, by name.

peft saves an adapter's tensors as ``base_model.model.<module>.<what>`` (the adapter's own name taken
out), ``<module>`` being the base model's own module name: what peftlab's wrappers keep too.
"""

from __future__ import annotations

import re

from peftlab.errors import ModelError

PREFIX = "base_model.model."


def by_module(tensors: dict, suffixes: tuple[str, ...], method: str) -> dict[str, dict]:
    """``{module name: {suffix: tensor}}`` of peft's tensor names ``PREFIX<module>.<suffix>``; a tensor
    of another form is refused by name (peft stores it for something ``method`` does not have)."""
    out: dict[str, dict] = {}
    for key, tensor in tensors.items():
        suffix = next((s for s in suffixes if key.startswith(PREFIX) and key.endswith("." + s)), None)
        if suffix is None:
            raise ModelError(f"import {method}: the adapter holds {key!r}, which peftlab's {method} has no place "
                             f"for (expected {PREFIX}<module>.{{{', '.join(suffixes)}}})")
        out.setdefault(key[len(PREFIX):-len(suffix) - 1], {})[suffix] = tensor
    if not out:
        raise ModelError(f"import {method}: the adapter holds no tensors")
    return out


def refuse(config: dict, method: str, **neutral) -> None:
    """Refuse every peft option of ``config`` set away from its ``neutral`` value (absent, null, an
    empty list or mapping count as neutral too), naming each."""
    set_ = [f"{k}={config[k]!r}" for k, v in neutral.items() if config.get(k) not in (v, None, [], {})]
    if set_:
        raise ModelError(f"import {method}: peftlab's {method} has no form of {', '.join(set_)}")


def peft_matches(name: str, targets) -> bool:
    """Whether peft's ``target_modules``-style value selects module ``name``: a list of names (the
    name, or a suffix after a dot), a regex matching the whole name, or None (nothing)."""
    if targets is None:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)
