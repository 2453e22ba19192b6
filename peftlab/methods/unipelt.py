"""UniPELT: Mao et al., "UniPELT: A Unified Framework for Parameter-Efficient Language Model Tuning"
(ACL 2022, arXiv:2110.07577).

LoRA, prefix tuning and a bottleneck adapter in one model, each sub-module behind its own learned
gate, so training decides which of them each layer uses. A gate reads the input of its sub-module::

    G = pool_t σ(W_G x_t + b_G)                     x: (B, T, d_in) -> G: (B, T, 1) or (B, 1, 1) (Pooling)
    LoRA:    h = W x + G_L · B A x                  the gate replaces LoRA's constant α/r
    prefix:  K ← [G_P P_K ; K],  V ← [G_P P_V ; V]  x: the attention's input (shared key/value gate)
    adapter: h ← z + G_A · up(f(down(z)))           z = h + y, Pfeiffer's place after the FFN

This is AdapterHub ``adapters``' ``UniPELTConfig`` (prefix length 10 through an MLP, Pfeiffer adapter
with m = d/16 and ReLU, LoRA r = 8 on q and v of every attention), which matches the paper's code:
the mean over the positions of the call (padding included) and no α/r once gated. LoRA and the
adapter are ``lora.py``'s and ``bottleneck.py``'s modules with a gate; the prefix is ``prefix.py``'s
rows (MLP while training, folded when the run saves) through the attention hook point.

Pooling (``gate_pooling``, see ``pooling.py``). The references' mean over the call reads later
positions on a decoder (a gate at t sees the tokens teacher forcing feeds after t, so training can
pass the answer through it) and padding everywhere (a row's outputs depend on its batch; the
paper's setting, BERT on GLUE, is an encoder, where only this one applies). ``causal`` (default)
pools with the mask::

    decoder (LLaMA, T5's decoder):  G_t = Σ_{u≤t} m_u s_u / Σ_{u≤t} m_u     s_u = σ(W_G x_u + b_G), m: the mask
    encoder (T5's encoder; the encoder states a cross-attention's k, v read):  G = Σ_u m_u s_u / Σ_u m_u

so a gate differs per position on a decoder (the prefix gate too: query t sees G_t P_K, G_t P_V; the
attention hook then runs calls of more than one query on keys twice as wide), and the KV cache
carries each gate's running sum, so cached generation gives the full forward's logits exactly.
``reference`` is AdapterHub's mean over the call, padding included: the parity tests match
AdapterHub's outputs on the same weights with it (``tests/methods/test_unipelt.py``). Adapters saved before
this field existed were trained with it, and reload with it. ``modules`` switches sub-modules off
(the paper's UniPELT (AP) is ``[adapter, prefix]``).

Trainable parameters: LoRA r·(in + out) + (in + 1) per wrapped linear; adapter 2·d·m + m + d + (d + 1)
per block; prefix S·(d + 1) for the gates of S attention sites of key/value width W, plus the rows
S·2·P·W, or while training the MLP P·W + (W·h + h) + (h·S·2W + S·2W) (``prefix_projection: h``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch
from torch import nn
import torch.nn.functional as F

from peftlab.config import FieldError
from peftlab.errors import ModelError
from peftlab.methods.hooks.attention import attach
from peftlab.methods.base import MethodConfig
from peftlab.methods.hooks.bottleneck import ACTIVATIONS, SUBLAYERS, BottleneckAdapter, place
from peftlab.methods.lora import LoraLinear, is_quantized
from peftlab.methods.pfeiffer import PfeifferConfig
from peftlab.methods.hooks.pooling import PooledGate, add_pools, reads_encoder
from peftlab.methods.prefix import PrefixConfig, PrefixKV, PrefixMLP, rope_at
from peftlab.methods.hooks.targets import find_linears, is_fan_in_fan_out, replace_module, stack_of

MODULES = ("lora", "prefix", "adapter")
POOLINGS = ("causal", "reference")
SLOT = "unipelt_prefix"  # attention.<SLOT>: the gated prefix of an attention module
MLP_ATTR = "unipelt_prefix_mlp"  # model.<MLP_ATTR>: the prefix reparametrisation while training


def gate_linear(d: int, device=None) -> nn.Linear:
    """W_G: d -> 1, N(0, 0.02) and zero bias (AdapterHub's init of the weight): G ≈ 0.5 at start."""
    gate = nn.Linear(d, 1, device=device)
    nn.init.normal_(gate.weight, std=0.02)
    nn.init.zeros_(gate.bias)
    return gate


class GatedLoraLinear(PooledGate, LoraLinear):
    """``h = W x + G_L(x) · B A x``; cannot be merged (its scale depends on the input)."""

    def __init__(self, base: nn.Module, r: int, dropout: float):
        super().__init__(base, r, alpha=r, dropout=dropout, init="kaiming", rslora=False)  # α/r = 1: G_L scales
        self.gate = gate_linear(self.in_features, device=self.lora_a.device)

    def adapter_parameters(self):
        return iter((self.lora_a, self.lora_b, self.gate.weight, self.gate.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_forward(x)
        a, b = self.factors(x)
        g = self.pooled_gate(x).to(y.dtype)  # (B, T or 1, 1)
        return y + F.linear(F.linear(self.dropout(x), a), b) * g

    def merge(self) -> None:
        raise ModelError("unipelt: a gated LoRA cannot be merged into its weight: its scale σ(W_G x) depends on "
                         "the input")


class GatedPrefixKV(PooledGate, PrefixKV):
    """Prefix rows scaled by ``G_P`` of the attention's input (recorded by a pre-hook on the attention);
    a gate per query when it pools causally (the attention hook widens the call for it)."""

    method = "unipelt"

    def __init__(self, length, heads, dim, d_model, rope=None, shared=None, site=0):
        super().__init__(length, heads, dim, rope, shared, site)
        self.gate = gate_linear(d_model)
        self._x = None

    def record_input(self, attention, args, kwargs):
        self._x = args[0] if args else kwargs["hidden_states"]

    def extra_kv(self, module, key):
        k, v = super().extra_kv(module, key)  # (1, H_kv, P, d)
        x, self._x = self._x, None
        if x is None:
            raise RuntimeError(f"unipelt: {type(module).__name__} ran without its input recorded")
        g = self.pooled_gate(x).to(k.dtype)  # (B, q or 1, 1)
        return k, v, g.view(g.shape[0], 1, g.shape[1], 1)  # (B, 1, q or 1, 1): the hook scales k, v by it


class GatedAdapter(PooledGate, BottleneckAdapter):
    """A Pfeiffer adapter whose output is scaled by ``G_A`` of its input z = h + y."""

    def __init__(self, d: int, m: int, cfg, norm, device=None):
        super().__init__(d, m, cfg, norm, device=device)
        self.gate = gate_linear(d, device=device)
        if cfg.init == "bert":  # AdapterHub's init of the whole adapter, its gate included
            nn.init.normal_(self.gate.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.pooled_gate(x).to(self.down.weight.dtype)


@dataclass(frozen=True)
class UniPELTConfig(MethodConfig):
    name = "unipelt"
    needs_table = "the attention modules and the sub-layers"  # from a family table
    cannot_merge = "its LoRA, prefix and adapter are scaled by gates that depend on the input"
    modules: tuple[str, ...] = MODULES  # gated sub-modules: lora, prefix, adapter
    r: int = 8  # LoRA rank
    lora_targets: tuple[str, ...] = ("q", "v")  # LoRA's linears (roles, leaf names, re:<regex>)
    lora_dropout: float = 0.0  # dropout on LoRA's input
    prefix_length: int = 10  # P: prefix rows per attention layer
    prefix_projection: int = 512  # h of the prefix MLP while training (folded on save); 0 = rows directly
    encoder_self: bool = True  # T5: prefix the encoder self-attention
    decoder_self: bool = True  # T5 decoder self-attention; the attention of a decoder-only model
    cross: bool = True  # T5: prefix the cross-attention
    reduction_factor: float = 16.0  # adapter bottleneck m = d // reduction_factor
    bottleneck: Optional[int] = None  # m itself; overrides reduction_factor
    nonlinearity: str = "relu"  # the adapter's f
    adapter_sublayers: tuple[str, ...] = ("ffn",)  # Pfeiffer's place: after the FFN
    adapter_init: Literal["bert", "zero_up", "houlsby"] = "bert"  # bert: AdapterHub's UniPELT adapter
    # causal: a decoder's gate at t pools positions <= t, an encoder's the whole input, padding left
    # out; reference: AdapterHub's mean over the call, padding included (reads later tokens)
    gate_pooling: Literal["causal", "reference"] = "causal"
    # what adapters saved before gate_pooling existed were trained with (io.load_adapter)
    legacy_defaults: ClassVar[dict] = {"gate_pooling": "reference"}

    def __post_init__(self):
        for name in ("modules", "lora_targets", "adapter_sublayers"):
            if isinstance(getattr(self, name), str):
                raise FieldError(name, f"{name} must be a list, got the string {getattr(self, name)!r}")
        if not self.modules or any(m not in MODULES for m in self.modules):
            raise FieldError("modules", f"modules must name some of {', '.join(MODULES)}, got {list(self.modules)}")
        for name, low in (("r", 1), ("prefix_length", 1), ("prefix_projection", 0), ("bottleneck", 1)):
            value = getattr(self, name)
            if value is not None and not value >= low:
                raise FieldError(name, f"{name} must be >= {low}" + (" or null" if name == "bottleneck" else "")
                                 + f", got {value}")
        if not 0 <= self.lora_dropout < 1:
            raise FieldError("lora_dropout", f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_targets:
            raise FieldError("lora_targets", "lora_targets must name at least one linear layer")
        if not self.reduction_factor > 0:
            raise FieldError("reduction_factor", f"reduction_factor must be > 0, got {self.reduction_factor}")
        if self.nonlinearity not in ACTIVATIONS:
            raise FieldError("nonlinearity", f"nonlinearity must be one of {', '.join(ACTIVATIONS)}, "
                                             f"got {self.nonlinearity!r}")
        if not self.adapter_sublayers or any(s not in SUBLAYERS for s in self.adapter_sublayers):
            raise FieldError("adapter_sublayers", f"adapter_sublayers must name some of {', '.join(SUBLAYERS)}, "
                                                  f"got {list(self.adapter_sublayers)}")
        if self.adapter_init not in ("bert", "zero_up", "houlsby"):
            raise FieldError("adapter_init", f"adapter_init must be bert, zero_up or houlsby, got {self.adapter_init!r}")
        if self.gate_pooling not in POOLINGS:
            raise FieldError("gate_pooling", f"gate_pooling must be causal or reference, got {self.gate_pooling!r}")
        if "prefix" in self.modules and not (self.encoder_self or self.decoder_self or self.cross):
            raise FieldError("encoder_self", "encoder_self, decoder_self and cross are all false: no attention "
                                             "gets a prefix (leave prefix out of modules instead)")

    def describe(self) -> str:
        return "UniPELT" + ("" if set(self.modules) == set(MODULES) else f" ({'+'.join(self.modules)})")

    def comparison_defect(self) -> str | None:
        if self.gate_pooling == "reference":
            return ("trained with the reference gate, which pools over later tokens and padding (teacher "
                    "forcing can read the answer)")
        return None

    def _prefix(self) -> PrefixConfig:
        return PrefixConfig(self.prefix_length, self.prefix_projection, self.encoder_self, self.decoder_self, self.cross)

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        injected: list[nn.Module] = []
        d = getattr(model.config, family.hidden_size)
        device = next(model.parameters()).device
        pools = add_pools(model, family, self.name) if self.gate_pooling == "causal" else {}

        def pooled(module, stack, memory=False):
            if pools:
                module.use_pool(pools[stack], memory)
            return module

        if "lora" in self.modules:
            for name, linear in find_linears(model, family, self.lora_targets, method=self.name):
                if not (type(linear) is nn.Linear or is_fan_in_fan_out(linear) or is_quantized(linear)):
                    raise ModelError(f"unipelt: {name} is already wrapped ({type(linear).__name__})")
                module = pooled(GatedLoraLinear(linear, self.r, self.lora_dropout), stack_of(name, family),
                                reads_encoder(name, family))
                replace_module(model, name, module)
                injected.append(module)
        if "prefix" in self.modules:
            injected += self._apply_prefix(model, family, d, device, pooled)
        if "adapter" in self.modules:
            adapter = PfeifferConfig(reduction_factor=self.reduction_factor, bottleneck=self.bottleneck,
                                     nonlinearity=self.nonlinearity, init=self.adapter_init)
            m = adapter.bottleneck_size(d)
            injected += place(model, family, self.name, self.adapter_sublayers,
                              lambda stack, i, kind, norm: pooled(GatedAdapter(d, m, adapter, norm, device=device),
                                                                  stack))
        return injected

    def _apply_prefix(self, model, family, d, device, pooled) -> list[nn.Module]:
        if hasattr(model, MLP_ATTR):
            raise ModelError("unipelt: this model already has a UniPELT prefix")
        sites = self._prefix().sites(model, family)
        heads, dim = family.kv_heads(model.config), family.head_size(model.config)
        rope = rope_at(model, family, self.prefix_length, device) if family.rotary else None
        shared = None
        if self.prefix_projection:
            shared = PrefixMLP(self.prefix_length, heads * dim, self.prefix_projection, len(sites)).to(device)
            model.add_module(MLP_ATTR, shared)
        out = [shared] if shared is not None else []
        for i, (name, attention) in enumerate(sites):
            ext = pooled(GatedPrefixKV(self.prefix_length, heads, dim, d, rope, shared, i).to(device),
                         stack_of(name, family))
            attach(model, name, SLOT, ext)
            attention.register_forward_pre_hook(ext.record_input, with_kwargs=True)
            out.append(ext)
        return out

    def fold(self, model: nn.Module, family):
        """The prefix MLP into plain rows (same outputs); ``prefix_projection`` becomes 0."""
        if "prefix" not in self.modules or not self.prefix_projection:
            return None
        for _, attention in self._prefix().sites(model, family):
            getattr(attention, SLOT).fold()
        delattr(model, MLP_ATTR)
        mine = [m for m in model.modules() if isinstance(m, (GatedLoraLinear, GatedPrefixKV, GatedAdapter))]
        return dataclasses.replace(self, prefix_projection=0), mine
