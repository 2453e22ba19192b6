"""The two baselines every comparison needs, as methods of the same bench.

* ``full``: full fine-tuning — every base parameter is trainable, nothing is injected.
* ``zero_shot``: no training — nothing is trainable; the run only evaluates the base model.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.methods.base import MethodConfig


@dataclass(frozen=True)
class FullFineTuneConfig(MethodConfig):
    name = "full"
    summary = "Full fine-tuning: every base weight trains, nothing is added (the baseline from above)."
    trains_base = True
    lr_grid = (3e-5, 1e-4, 3e-4, 1e-3)  # every weight moves: an order of magnitude below the adapters
    cannot_merge = None  # the trained weights are the model's own
    adds_modules = False

    def describe(self) -> str:
        return "full fine-tune"

    def merge_into_base(self, model, family) -> None:
        pass


@dataclass(frozen=True)
class ZeroShotConfig(MethodConfig):
    name = "zero_shot"
    summary = "Zero-shot: nothing trains; the base model as it is, scored (the baseline from below)."
    lr_grid = ()  # nothing trains
    cannot_merge = None
    adds_modules = False

    def describe(self) -> str:
        return "zero-shot"

    def apply(self, model, family):
        return []

    def merge_into_base(self, model, family) -> None:
        pass
