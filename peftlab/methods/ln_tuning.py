"""LN tuning: Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning (Zhao et al.,
ICLR 2024, arXiv:2312.11420), as HF peft's ``LN_TUNING``.

Only the normalisation layers train: their gain γ (and shift β, where the norm has one)::

    LayerNorm(h) = γ ⊙ (h − μ) / σ + β,    RMSNorm(h) = γ ⊙ h / rms(h)      γ, β trained; all else frozen

Every norm of the model trains: those before each sub-layer and each stack's final norm (the
family table's ``norms`` and ``final_norms``; peft's defaults: T5's ``layer_norm`` and
``final_layer_norm``, LLaMA's ``input_layernorm``, ``post_attention_layernorm`` and ``norm``). The
parameters are the base's own, trained in place under their own names (peft trains a copy of each
norm beside the frozen one; the function is the same), so the model starts as the base model and
there is nothing to merge: the merged model is the trained one. ``to_peft`` writes peft's LN tuning
(each norm's tensors as ``<norm>.ln_tuning_layers.<weight|bias>``). Parameters: the widths of the
norms (twice that for LayerNorm).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftlab.methods.base import BaseWeights, MethodConfig


def norms_of(model: nn.Module, family) -> dict[str, nn.Module]:
    """``{qualified name: norm}`` of every norm in the blocks and every stack's final norm."""
    out = {}
    for stack, i, block in family.blocks(model):
        for name, m in family.block_norms(block):
            out[f"{family.stacks[stack]}.{i}.{name}"] = m
    return out | {path: model.get_submodule(path) for path in family.final_norms}


@dataclass(frozen=True)
class LNTuningConfig(MethodConfig):
    name = "ln_tuning"
    needs_table = "the norms (family table's norms and final_norms)"
    lr_grid = (1e-4, 3e-4, 1e-3, 3e-3)  # the base's own gains: smaller steps than a new adapter's

    cannot_merge = None  # the trained norms are the model's own

    def describe(self) -> str:
        return "LN tuning"

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        return [BaseWeights([p for norm in norms_of(model, family).values() for p in norm.parameters(recurse=False)])]

    def merge_into_base(self, model: nn.Module, family) -> None:
        """Nothing to fold: the trained gains and shifts are the base's own."""

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict]:
        norms = norms_of(model, family)
        tensors = {f"base_model.model.{name}.ln_tuning_layers.{pname}": p.detach().cpu().contiguous()
                   for name, norm in norms.items() for pname, p in norm.named_parameters(recurse=False)}
        config = {"peft_type": "LN_TUNING", "target_modules": sorted({n.rsplit(".", 1)[-1] for n in norms}),
                  "modules_to_save": None}
        return config, tensors
