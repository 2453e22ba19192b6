"""The method protocol: what every PEFT method provides, and what the rest of peftlab may assume.

A method is a frozen config dataclass with a registry ``name`` and an ``apply(model, family)`` that
injects its modules in place and returns them. Each injected module declares its own trainable
parameters through ``adapter_parameters()``; nothing finds parameters by matching names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Iterator

from torch import nn

if TYPE_CHECKING:
    from peftlab.models.arch import Family


class AdapterModule(nn.Module):
    """Base for modules a method injects. Subclasses list their own trainable parameters."""

    # A module with a fused forward/backward (LoRA) uses it while this is True; the plain path of
    # composed torch ops is kept beside it, for ``train.fused_kernels: false`` and the tests.
    fused: bool = True

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the method trains (default: all parameters of this module)."""
        return self.parameters()


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config. Subclasses are frozen dataclasses with a ``name``."""

    name: ClassVar[str] = ""
    # Families the method supports (``None`` = every family in ``peftlab.models``).
    families: ClassVar[tuple[str, ...] | None] = None
    # True when the method trains the base model's own weights (full fine-tuning).
    trains_base: ClassVar[bool] = False

    def apply(self, model: nn.Module, family: "Family") -> list[nn.Module]:
        """Inject this method into ``model`` in place; return the injected modules."""
        raise NotImplementedError

    def describe(self) -> str:
        """Short label for tables, e.g. ``lora r=32``."""
        return self.name

    @classmethod
    def dispatch(cls, name: str) -> type["MethodConfig"]:
        from peftlab.methods import get_method

        return get_method(name)

    def to_dict(self) -> dict:
        out = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out
