"""The method protocol: what every PEFT method provides, and what the rest of peftlab may assume.

A method is a frozen config dataclass with a registry ``name`` and an ``apply(model, family)`` that
injects its modules in place and returns them. Each injected module declares its own trainable
parameters through ``adapter_parameters()``; nothing finds parameters by matching names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Iterator

import torch
from torch import nn

from peftlab.config import NamedConfig

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

    def adapter_buffers(self) -> Iterator[torch.Tensor]:
        """Frozen tensors saved with the trained parameters (``io.save_adapter``): values a fresh base
        cannot give back bit for bit (PiSSA's initial factors, VeRA's shared random matrices).
        Default: none."""
        return iter(())

    def lora_b_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters LoRA+ (``train.loraplus_ratio``) steps at ratio × the learning rate: the
        output factor B of a low-rank update (zero at init). Default: none."""
        return iter(())


class StepHook:
    """A method's part in each optimizer step of the training loop (AdaLoRA: its orthogonality
    regulariser and its rank allocation), from ``MethodConfig.step_hook``. ``extra_loss()`` is added
    to every micro-batch's loss before backward; ``after_step(step, total_steps)`` runs once per
    optimizer step, after ``optimizer.step()`` and before the gradients are cleared (they are still
    there), ``step`` being the 0-based index of the step just taken (what HF's Trainer passes to
    peft's ``update_and_allocate``) and ``total_steps`` the run's ``train.max_steps``."""

    def extra_loss(self) -> torch.Tensor | None:
        return None

    def after_step(self, step: int, total_steps: int | None) -> None:
        pass


class BaseWeights(AdapterModule):
    """Hands base weights (norms, embeddings) to ``apply_methods`` as a method's parameters. It is
    not attached to the model, so the weights keep their base names (and load strictly)."""

    def __init__(self, params: list[nn.Parameter]):
        super().__init__()
        self.__dict__["params"] = params  # a plain list: not registered a second time

    def adapter_parameters(self):
        return iter(self.params)


@dataclass(frozen=True)
class MethodConfig(NamedConfig):
    """Base of every method's config. Subclasses are frozen dataclasses with a ``name``."""

    # Families the method supports (``None`` = every family in ``peftlab.models``).
    families: ClassVar[tuple[str, ...] | None] = None
    # What the method needs from a family table that a model without one cannot give (``apply_methods``
    # refuses such a model, naming it); None = the method works from the layers its config names, on
    # any transformers model (``peftlab.models.generic``: linear layers by name, residual branches).
    needs_table: ClassVar[str | None] = None
    # True when the method trains the base model's own weights (full fine-tuning).
    trains_base: ClassVar[bool] = False
    # Fields added after adapters of the method were first saved, with the value such an adapter was
    # trained with where it differs from today's default: ``load_adapter`` fills them into an older
    # manifest, so the adapter reloads as the function it was trained as.
    legacy_defaults: ClassVar[dict] = {}
    # Learning rates a bench tries for this method when its spec gives none (``tuning``): half-decade
    # steps around where the method's papers train. () = nothing to tune (zero-shot); None = this
    # method leaves the choice to the others it is composed with (a training-only modifier)
    lr_grid: ClassVar[tuple[float, ...] | None] = (3e-4, 1e-3, 3e-3, 1e-2)

    def apply(self, model: nn.Module, family: "Family") -> list[nn.Module]:
        """Inject this method into ``model`` in place; return the injected modules."""
        raise NotImplementedError

    def describe(self) -> str:
        """Short label for tables, e.g. ``lora r=32``."""
        return self.name

    def fold(self, model: nn.Module, family: "Family") -> tuple["MethodConfig", list[nn.Module]] | None:
        """Turn a training-time parametrisation into its inference form, in place (e.g. prefix
        tuning's MLP into plain prefixes), with identical outputs. Returns the config that rebuilds
        the folded form (what ``load_adapter`` applies) and the method's modules now, or ``None``
        when there is nothing to fold (the default). Called by ``state.fold_methods`` after training."""
        return None

    def comparison_defect(self) -> str | None:
        """Why runs trained with this configuration must not be compared (a report marks them
        invalid), or None. UniPELT's reference gate reads later tokens, for one."""
        return None

    def training_only(self) -> bool:
        """True when the method changes training only and the trained model runs without it (S²-Attn:
        sparse attention while training, dense after); export and merge then leave it out."""
        return False

    # Why the method cannot be folded into the weights of a plain transformers model (``peftlab merge``
    # and ``export`` say so); None where ``merge_into_base`` folds it.
    cannot_merge: ClassVar[str | None] = "it adds modules a plain transformers model does not have"
    # False for the baselines (full fine-tuning, zero-shot): nothing is added to the model to export
    adds_modules: ClassVar[bool] = True

    def merge_into_base(self, model: nn.Module, family: "Family") -> None:
        """Fold this method into the base model's own weights, in place, and put the plain layers back
        (what ``peftlab merge`` writes). Implemented by the methods whose ``cannot_merge`` is None."""
        from peftlab.errors import ModelError

        raise ModelError(f"{self.name}: {self.cannot_merge}")

    def to_peft(self, model: nn.Module, family: "Family") -> tuple[dict, dict] | None:
        """HF peft's form of this method on ``model``: ``(adapter_config fields, adapter tensors)``;
        ``None`` when peft has no such method (the default); ``ModelError`` with the reason when
        this instance is not exactly representable."""
        return None

    @classmethod
    def from_peft(cls, config: dict, tensors: dict, family: "Family") -> tuple["MethodConfig", dict] | None:
        """The inverse of ``to_peft``: a peft adapter (its ``adapter_config.json`` fields and tensors) as
        this method's config and its tensors under the names the method's parameters take in a model it
        is applied to (what ``io.save_adapter`` writes); ``None`` when the adapter is not this method's
        (the default); ``ModelError`` naming what peftlab cannot represent."""
        return None

    def step_hook(self, model: nn.Module) -> StepHook | None:
        """What the method does around each optimizer step of the loop (``StepHook``), for the
        modules it applied to ``model``; None (the default) for nothing."""
        return None

    def task_params(self, model: nn.Module) -> list[int] | None:
        """Multi-task methods (HyperFormer): how many of the method's trainable parameters belong to
        each task (index = task id); the rest are shared by all tasks. ``None``: nothing per task."""
        return None

    @classmethod
    def dispatch(cls, name: str) -> type["MethodConfig"]:
        from peftlab.methods.registry import get_method

        return get_method(name)


# -- HF peft's field names (``aliases`` of the method configs that share peft's meaning) -----------

def peft_modules(value):
    """peft's ``target_modules`` as peftlab's ``targets``: a list of names means the same in both (a
    module whose name is one of them or ends with ``.`` + one); a string is a regex that must match
    the whole module name, peftlab's ``re:<regex>`` (but ``all-linear``, the same in both)."""
    if value is None:
        raise ValueError("null (peft's default for the architecture) has no peftlab form; name the layers")
    if isinstance(value, str):
        return (value,) if value == "all-linear" else ("re:" + value,)
    return tuple(value) if isinstance(value, list) else value


def peft_lora_init(value):
    """peft's ``init_lora_weights`` as peftlab's LoRA ``init``: ``true`` is Kaiming-uniform A (B = 0),
    a name (``gaussian``, ...) the same name; ``false`` (B drawn at random: the model changes at init)
    has no peftlab form."""
    if value is True:
        return "kaiming"
    if value is False:
        raise ValueError("false (B at random, so the model changes at init) has no peftlab form; peftlab's "
                         "LoRA starts with B = 0")
    return value


def peft_choice(names: dict):
    """A converter of one of peft's enum values (``RANDOM``, ``SAMPLE_VOCAB``) to peftlab's name for it;
    another value passes on to the field's own check."""
    def convert(value):
        return names.get(str(getattr(value, "value", value)), value)

    return convert

