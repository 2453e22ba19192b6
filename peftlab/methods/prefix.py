"""Prefix-Tuning: Optimizing Continuous Prompts for Generation (Li & Liang, 2021, arXiv:2101.00190).

Every selected attention layer ``s`` attends to P trainable key/value rows before the input's::

    head = softmax(q [P_k^s ; K]^T · scale + bias) [P_v^s ; V]      P_k^s, P_v^s: (H_kv, P, d)

through the attention hook point (``attention.py``, a key/value extender): on T5 the encoder
self-attention, the decoder self-attention and the cross-attention, each switchable — HF peft's
prefix goes through ``past_key_values`` and never reaches the T5 encoder (peft issue #491). On
LLaMA with grouped-query attention there is one prefix row per key/value head (H_kv), as in peft.

Reparametrisation (paper §4.3; peft's ``prefix_projection``): training the rows directly is
unstable, so during training they come from a shared MLP over a smaller matrix E::

    [P_k^1 P_v^1 … P_k^S P_v^S] = W2 tanh(W1 E + b1) + b2      E: (P, W), W1: (h, W), W2: (S·2W, h)

with W = H_kv·d the width of one layer's keys and S the number of prefixed attention layers (the
column layout per row is [site][key/value][head][dim], peft's). ``fold_methods`` replaces the MLP
by the rows it produces: the saved adapter holds S·2·P·W numbers and gives the same outputs.

Positions. In the paper's GPT-2 code and in peft the prefix occupies positions 0…P-1 and the
input P…; prefix keys are never rotated. Our input keeps its positions 0… (so the KV cache,
``generate`` and every other method see the usual positions); with RoPE that is the same model
when the prefix keys are rotated by −P, ``R(−P) k = k cos Pθ − rotate_half(k) sin Pθ``, which the
extender applies. So peft's prefixes load here unchanged, and ours export to peft unchanged.
T5's relative position bias is zero on the prefix columns.

Trainable parameters: S·2·P·W, or with the MLP P·W + (W·h + h) + (h·S·2W + S·2W).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.hooks.attention import KVExtender, attach
from peftlab.methods.base import AdapterModule, MethodConfig

SLOT = "prefix"  # attention.<SLOT>: the extender on each prefixed attention module
MLP_ATTR = "prefix_mlp"  # model.<MLP_ATTR>: the shared reparametrisation while training


class PrefixMLP(AdapterModule):
    """E -> W2 tanh(W1 E + b1) + b2, computed one site (layer) at a time."""

    def __init__(self, length: int, width: int, hidden: int, sites: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(length, width))  # E: (P, W), N(0, 1) like peft
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, sites * 2 * width))
        self.width = width

    def site(self, i: int) -> torch.Tensor:
        """Site i's keys and values: (P, 2W). Only its rows of W2 are computed."""
        first, tanh, last = self.mlp
        rows = slice(2 * self.width * i, 2 * self.width * (i + 1))
        return F.linear(tanh(first(self.embedding)), last.weight[rows], last.bias[rows])


class PrefixKV(KVExtender):
    method = "prefix"

    def __init__(self, length: int, heads: int, dim: int, rope=None, shared: PrefixMLP | None = None, site: int = 0):
        super().__init__()
        self.shape = (length, 2, heads, dim)
        if shared is None:
            self.key = nn.Parameter(torch.randn(heads, length, dim))  # (H_kv, P, d)
            self.value = nn.Parameter(torch.randn(heads, length, dim))
        # The shared MLP is registered once, on the model; here only a plain reference.
        object.__setattr__(self, "shared", shared)
        self.site = site
        if rope is not None:  # cos/sin of angle P·θ, (d,): un-rotates prefix keys by P positions
            self.register_buffer("cos", rope[0], persistent=False)
            self.register_buffer("sin", rope[1], persistent=False)
        else:
            self.cos = self.sin = None

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shared is None:
            return self.key, self.value
        kv = self.shared.site(self.site).view(self.shape).permute(1, 2, 0, 3)  # (2, H_kv, P, d)
        return kv[0], kv[1]

    def extra_kv(self, module, key):
        k, v = self.rows()
        k, v = k.to(key.dtype), v.to(key.dtype)
        if self.cos is not None:
            half = k.shape[-1] // 2
            rotated = torch.cat((-k[..., half:], k[..., :half]), dim=-1)  # rotate_half
            k = k * self.cos.to(k.dtype) - rotated * self.sin.to(k.dtype)
        return k[None], v[None]  # (1, H_kv, P, d): broadcast over the batch

    @torch.no_grad()
    def fold(self) -> None:
        if self.shared is not None:
            k, v = self.rows()
            self.key, self.value = nn.Parameter(k.contiguous()), nn.Parameter(v.contiguous())
            object.__setattr__(self, "shared", None)

    def extra_repr(self) -> str:
        p, _, h, d = self.shape
        return f"length={p}, kv_heads={h}, head_dim={d}, reparametrised={self.shared is not None}"


@dataclass(frozen=True)
class PrefixConfig(MethodConfig):
    name = "prefix"
    needs_table = "the attention modules and their geometry"  # a model without a family table has neither
    aliases = {"num_virtual_tokens": "length"}  # HF peft's name
    cannot_merge = "its prefixes are extra keys and values in attention, not a change to any weight"
    lr_grid = (1e-3, 3e-3, 1e-2, 3e-2)  # Li & Liang: 5e-5 to 8e-5 on GPT-2 with a reparametrisation; small models take more
    length: int = 20  # P: prefix rows per attention layer (peft's num_virtual_tokens)
    projection: int = 0  # hidden width h of the reparametrisation MLP; 0 = train the rows directly
    encoder_self: bool = True  # T5: prefix the encoder self-attention
    decoder_self: bool = True  # T5 decoder self-attention; the (only) attention of a decoder-only model
    cross: bool = True  # T5: prefix the cross-attention (extra rows beside the encoder states)

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")
        if self.projection < 0:
            raise ValueError(f"projection must be >= 0 (0 = no MLP), got {self.projection}")
        if not (self.encoder_self or self.decoder_self or self.cross):
            raise ValueError("encoder_self, decoder_self and cross are all false: no attention gets a prefix")

    def describe(self) -> str:
        return f"prefix P={self.length}" + (f" mlp={self.projection}" if self.projection else "")

    def _wanted(self, stack: str, kind: str) -> bool:
        if kind == "cross":
            return self.cross
        return self.encoder_self if stack == "encoder" else self.decoder_self

    def sites(self, model: nn.Module, family) -> list[tuple[str, nn.Module]]:
        """The prefixed attention modules, bottom to top per stack (the MLP's column order)."""
        out = []
        for stack, i, block in family.blocks(model):
            for kind in ("self", "cross"):
                if self._wanted(stack, kind):
                    out += [(f"{family.stacks[stack]}.{i}.{n}", m) for n, m in family.sublayers(block, kind)]
        if not out:
            raise ModelError(f"prefix: the selected attention kinds (encoder_self={self.encoder_self}, "
                             f"decoder_self={self.decoder_self}, cross={self.cross}) do not exist in this "
                             f"{family.name} model")
        return out

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        if hasattr(model, MLP_ATTR):
            raise ModelError("prefix: this model already has a prefix")
        sites = self.sites(model, family)
        heads, dim = family.kv_heads(model.config), family.head_size(model.config)
        ref = next(model.parameters())
        rope = rope_at(model, family, self.length, ref.device) if family.rotary else None
        shared = None
        if self.projection:
            shared = PrefixMLP(self.length, heads * dim, self.projection, len(sites)).to(ref.device)
            model.add_module(MLP_ATTR, shared)
        extenders = []
        for i, (name, _) in enumerate(sites):
            ext = PrefixKV(self.length, heads, dim, rope, shared, i).to(ref.device)
            attach(model, name, SLOT, ext)
            extenders.append(ext)
        return ([shared] if shared is not None else []) + extenders

    def fold(self, model: nn.Module, family):
        if not self.projection:
            return None
        extenders = [m for _, m in self._extenders(model, family)]
        for ext in extenders:
            ext.fold()
        delattr(model, MLP_ATTR)
        return dataclasses.replace(self, projection=0), extenders

    def _extenders(self, model, family) -> list[tuple[str, PrefixKV]]:
        return [(name, getattr(m, SLOT)) for name, m in self.sites(model, family)]

    def to_peft(self, model: nn.Module, family) -> tuple[dict, dict[str, torch.Tensor]]:
        """HF peft's PREFIX_TUNING form (decoders): ``prompt_embeddings`` (P, L·2W), the folded rows."""
        if family.kind != "causal":
            raise ModelError(f"peft export: peft's prefix tuning cannot express this {family.name} prefix: it "
                             f"goes through past_key_values, which never reach the T5 encoder (peft issue #491) "
                             f"and shift T5's relative positions, so the outputs would differ")
        with torch.no_grad():
            rows = [torch.stack(ext.rows()) for _, ext in self._extenders(model, family)]  # (2, H_kv, P, d) each
            flat = torch.stack(rows).permute(3, 0, 1, 2, 4).reshape(self.length, -1)  # (P, [L][kv][head][dim])
        heads, dim = family.kv_heads(model.config), family.head_size(model.config)
        config = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": self.length,
                  "num_layers": len(rows), "token_dim": heads * dim, "num_attention_heads": heads,
                  "num_transformer_submodules": 1, "prefix_projection": False,
                  "encoder_hidden_size": heads * dim}
        return config, {"prompt_embeddings": flat.detach().cpu().contiguous()}


@torch.no_grad()
def rope_at(model, family, position: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the model's own rotary embedding at ``position``: (d,) each, float32."""
    rotary = model.get_submodule(family.rotary)
    x = torch.zeros(1, device=device, dtype=torch.float32)
    cos, sin = rotary(x, torch.tensor([[position]], device=device))
    return cos.reshape(-1).float(), sin.reshape(-1).float()
