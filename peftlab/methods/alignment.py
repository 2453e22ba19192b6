"""Hyper alignment adapter (seed 000: Mohammed, "Enhancing PEFT of LLMs with alignment adapters
and LoRA", University of Kansas MS project).

The seed places an adapter between a T5 encoder and its decoder::

    Alignment(X) = GELU(RMSNorm(W_θ ⊙ X))

with ``X`` (B, T, d) the final encoder hidden states and ``W_θ`` produced by "a single
linear-layered hypernetwork" from "the properties of the input data".

Our reading. A hypernetwork that emitted a full d × d matrix from a d-vector through one linear
layer would need d³ weights (453M at d=768), yet the seed reports only ≈0.56M parameters for the
adapter (4.1M total minus 3.54M for LoRA r=32 on FLAN-T5-base). A single d → d linear map is
0.59M, so ``W_θ`` is a per-example d-vector and ``⊙`` the element-wise product broadcast over
tokens — a diagonal, input-conditioned re-weighting of the encoder's channels::

    z   = masked_mean_t(X)                       (B, d)   what the hypernetwork is conditioned on
    e   = z             or  D z   (D: h × d)     (B, h)   optional bottleneck, ``hidden`` = h
    W_θ = H e + c                                (B, d)   the hypernetwork: one linear layer
    A   = GELU(RMSNorm(W_θ[:, None, :] ⊙ X))     (B, T, d)

``mode="replace"`` feeds ``A`` to the decoder's cross-attention as the seed does; then the model
does not start as the base model. ``mode="residual"`` (default) feeds ``X + g ⊙ A`` with a
zero-initialised gate ``g`` (d,), so outputs equal the base model's at init (identity), as in
LLaMA-Adapter's zero-init gating. ``H`` starts at zero and ``c`` at one, so ``W_θ = 1`` at init.
Parameters: d·d + d (H, c) [or h·d + h + h·d + d with the bottleneck] + d (RMSNorm) + d (gate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule, MethodConfig

ATTR = "hyper_alignment"


class HyperAlignmentAdapter(AdapterModule):
    def __init__(self, d: int, hidden: Optional[int], mode: str, eps: float):
        super().__init__()
        self.mode = mode
        self.down = nn.Linear(d, hidden) if hidden else None  # D: conditioning bottleneck
        self.hyper = nn.Linear(hidden or d, d)  # H, c: generates W_θ
        nn.init.zeros_(self.hyper.weight)
        nn.init.ones_(self.hyper.bias)
        self.norm = nn.RMSNorm(d, eps=eps)
        self.gate = nn.Parameter(torch.zeros(d)) if mode == "residual" else None

    def generate_weights(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if mask is None:
            z = x.mean(dim=1)  # (B, d)
        else:
            m = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
            z = (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        e = self.down(z) if self.down is not None else z
        return self.hyper(e)  # (B, d)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(self.hyper.weight.dtype) if not torch.is_autocast_enabled(x.device.type) else x
        w = self.generate_weights(h, mask)
        a = F.gelu(self.norm(w.unsqueeze(1) * h))  # (B, T, d)
        out = h + self.gate * a if self.gate is not None else a
        return out.to(dtype)


def _encoder_hook(module, args, kwargs, output):
    # Look the adapter up on the encoder at call time (not in a closure), so a deep copy of the
    # model runs its own adapter and the model still pickles.
    adapter = getattr(module, ATTR)
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    if isinstance(output, tuple):
        return (adapter(output[0], mask),) + tuple(output[1:])
    output.last_hidden_state = adapter(output.last_hidden_state, mask)
    return output


@dataclass(frozen=True)
class AlignmentConfig(MethodConfig):
    name = "alignment"
    cannot_merge = "it adds a hypernetwork between the encoder and the decoder"
    families = ("t5",)  # needs an encoder-decoder
    hidden: Optional[int] = None  # hypernetwork bottleneck h; None = one d x d layer (the seed's)
    mode: Literal["residual", "replace"] = "residual"  # residual: identity at init
    eps: float = 1e-6  # RMSNorm epsilon

    def __post_init__(self):
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"hidden must be >= 1 or null, got {self.hidden}")
        if self.mode not in ("residual", "replace"):
            raise ValueError(f"mode must be 'residual' or 'replace', got {self.mode!r}")
        from peftlab.config import positive

        positive(self, "eps")

    def describe(self) -> str:
        return "hyper alignment" + (f" h={self.hidden}" if self.hidden else "")

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        encoder = model.get_submodule(family.encoder)
        if hasattr(encoder, ATTR):
            raise ModelError("alignment: the encoder already has a hyper alignment adapter")
        d = getattr(model.config, family.hidden_size)
        adapter = HyperAlignmentAdapter(d, self.hidden, self.mode, self.eps).to(
            next(encoder.parameters()).device
        )
        encoder.add_module(ATTR, adapter)
        adapter._hook_handle = encoder.register_forward_hook(_encoder_hook, with_kwargs=True)
        return [adapter]
