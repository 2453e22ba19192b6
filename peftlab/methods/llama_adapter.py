"""LLaMA-Adapter: Efficient Fine-tuning of Language Models with Zero-init Attention (Zhang et al.,
2023, arXiv:2303.16199), as in lit-llama's ``adapter.py``, which seed 003 used.

Each of the top L layers gets K learnable adaption prompt vectors. The layer's own frozen key and
value projections turn them into keys and values (no RoPE on them), the layer's queries attend to
them with a softmax of their own, and a zero-initialised gate per head scales the result::

    A = P W_k, B = P W_v                          P: (K, d)  ->  A, B: (H_kv, K, d_h)
    out = Attn(q, K, V) + g ⊙ softmax(q A^T · d_h^-½) B      g: (H,), zeros at init

so the model starts as the base model. Through the attention hook point as an output adder
(``attention.py``), it composes with LoRA (the prompt goes through the LoRA-wrapped projections, as
lit-llama's goes through ``c_attn``), prefix tuning and a sparse attention core. Parameters:
L·(K·d + H); on LLaMA-7B (d=4096, H=32) with L=30, K=10 that is 1,229,760 (seed 003, Table 3).

HF peft's adaption prompt is the same computation with one gate per layer instead of per head:
``gate: layer`` trains that form (exported by ``to_peft`` as it is); with per-head gates ``to_peft``
exports only while every layer's gates are equal (at init) and refuses otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.hooks.attention import OutputAdder, attach
from peftlab.methods.base import MethodConfig

SLOT = "adaption_prompt"  # attention.<SLOT>: the prompt and gate of one layer
PEFT_MODEL_TYPES = ("llama", "mistral")  # what peft's adaption prompt supports among our families


class AdaptionPrompt(OutputAdder):
    method = "llama_adapter"

    def __init__(self, length: int, hidden: int, heads: int, k_proj: str, v_proj: str, gates: int | None = None):
        super().__init__()
        self.prompt = nn.Parameter(torch.randn(length, hidden))  # P: (K, d), N(0, 1) like peft/lit-llama
        self.gate = nn.Parameter(torch.zeros(heads if gates is None else gates))  # g: (H,) or (1,), zero-init
        self.k_proj, self.v_proj = k_proj, v_proj
        self._cached = None  # (stamp, (A, B)) for decoding: the prompt's keys/values change only when trained

    def _project(self, module, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prompt.to(dtype)
        k, v = getattr(module, self.k_proj)(x), getattr(module, self.v_proj)(x)  # (K, H_kv·d_h)
        n, d = x.shape[0], module.head_dim
        return k.view(n, -1, d).transpose(0, 1)[None], v.view(n, -1, d).transpose(0, 1)[None]  # (1, H_kv, K, d_h)

    def prompt_kv(self, module, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled() or self.training:
            return self._project(module, dtype)
        params = (self.prompt, *getattr(module, self.k_proj).parameters(), *getattr(module, self.v_proj).parameters())
        stamp = (dtype, torch.is_autocast_enabled(self.prompt.device.type), *((p.data_ptr(), p._version) for p in params))
        if self._cached is None or self._cached[0] != stamp:
            self._cached = (stamp, self._project(module, dtype))
        return self._cached[1]

    def delta(self, module, query, scaling):
        b, h, _, _ = query.shape
        k, v = self.prompt_kv(module, query.dtype)
        k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
        a = F.scaled_dot_product_attention(query, k.to(query.dtype), v.to(query.dtype), scale=scaling,
                                           enable_gqa=k.shape[1] != h)  # (B, H, q, d_h)
        return (self.gate.to(query.dtype).view(1, -1, 1, 1) * a).transpose(1, 2)  # (B, q, H, d_h)

    def extra_repr(self) -> str:
        return f"length={self.prompt.shape[0]}, hidden={self.prompt.shape[1]}, gates={self.gate.shape[0]}"


@dataclass(frozen=True)
class LlamaAdapterConfig(MethodConfig):
    name = "llama_adapter"
    aliases = {"adapter_len": "length", "adapter_layers": "layers"}  # HF peft's AdaptionPromptConfig
    cannot_merge = "its gated adaption prompts are extra keys and values in attention"
    lr_grid = (1e-3, 3e-3, 1e-2, 3e-2)  # zero-init gates start shut: the paper trains at 9e-3
    families = ("llama",)  # decoder-only (RoPE queries, causal self-attention)
    length: int = 10  # K: adaption prompt vectors per layer
    layers: Optional[int] = None  # L: the top L layers get prompts; None = all but the lowest 2
    #   (lit-llama's adapter_start_layer=2, i.e. L=30 on LLaMA-7B; every layer when there are <= 2)
    # head: a gate per head (the paper, lit-llama); layer: one per layer (HF peft's adaption prompt),
    # which is what a trained adapter needs to export to peft (per-head gates part after one step)
    gate: Literal["head", "layer"] = "head"

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"layers must be >= 1 or null, got {self.layers}")
        if self.gate not in ("head", "layer"):
            raise ValueError(f"gate must be 'head' or 'layer', got {self.gate!r}")

    def describe(self) -> str:
        return f"LLaMA-Adapter K={self.length}" + (f" L={self.layers}" if self.layers else "")

    def top_layers(self, model, family) -> list[tuple[str, nn.Module]]:
        blocks = family.blocks(model)
        n = len(blocks)
        count = self.layers if self.layers is not None else (n - 2 if n > 2 else n)
        if count > n:
            raise ModelError(f"{self.name}: layers={count} but the model has {n} layers")
        return [(f"{family.stacks[stack]}.{i}.{name}", m) for stack, i, block in blocks[n - count:]
                for name, m in family.sublayers(block, "self")]

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        hidden, heads = getattr(model.config, family.hidden_size), getattr(model.config, family.num_heads)
        (k_proj,), (v_proj,) = family.leaf_names("k"), family.leaf_names("v")
        device = next(model.parameters()).device
        added = []
        for name, _ in self.top_layers(model, family):
            prompt = AdaptionPrompt(self.length, hidden, heads, k_proj, v_proj,
                                    gates=1 if self.gate == "layer" else None).to(device)
            prompt.method = self.name
            attach(model, name, SLOT, prompt)
            added.append(prompt)
        return added

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict[str, torch.Tensor]]:
        """HF peft's ADAPTION_PROMPT form: one gate per layer, so per-head gates must be equal."""
        if model.config.model_type not in PEFT_MODEL_TYPES:
            raise ModelError(f"peft export: peft's adaption prompt does not support {model.config.model_type!r} "
                             f"models (only {', '.join(PEFT_MODEL_TYPES)})")
        layers = self.top_layers(model, family)
        tensors = {}
        for name, attention in layers:
            prompt = getattr(attention, SLOT)
            gate = prompt.gate.detach().cpu()
            if not torch.equal(gate, gate[:1].expand_as(gate)):
                raise ModelError(f"peft export: {name} has per-head gates {gate.tolist()}; peft's adaption prompt "
                                 f"has one gate per layer, so only equal per-head gates are representable "
                                 f"(train with gate: layer to export to peft)")
            tensors[f"base_model.model.{name}.adaption_prompt"] = prompt.prompt.detach().cpu()[None].contiguous()
            tensors[f"base_model.model.{name}.adaption_gate"] = gate[:1].contiguous()
        config = {"peft_type": "ADAPTION_PROMPT", "task_type": "CAUSAL_LM", "adapter_len": self.length,
                  "adapter_layers": len(layers), "target_modules": family.attention["self"]}
        return config, tensors
