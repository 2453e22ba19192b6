"""Pfeiffer adapters: Pfeiffer et al., "AdapterFusion: Non-Destructive Task Composition for Transfer
Learning" (EACL 2021, arXiv:2005.00247).

One serial bottleneck adapter per block, after the FFN only, reading the residual sum::

    z = h + y,   h ← z + A(z),   A(z) = up(f(down(z)))     z: (B, T, d),  down: d → m,  up: m → d

with m = d / 16 and f = ReLU by default. On pre-norm models (T5, LLaMA) this is where AdapterHub's
``SeqBnConfig`` puts it (``original_ln_before=True``, ``residual_before_ln=True``, no layer norm to
re-apply). Half the adapters of Houlsby at about the same quality (the paper's finding).
Parameters per adapter: 2·d·m + m + d. The module, placement and AdapterDrop (``drop_lowest``) are
in ``bottleneck.py``; ``init: zero_up`` (default) starts exactly at the base model.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.methods.hooks.bottleneck import BottleneckConfig


@dataclass(frozen=True)
class PfeifferConfig(BottleneckConfig):
    name = "pfeiffer"
    reads = "sum"  # h + y, the residual stream after the sub-layer
    reduction_factor: float = 16.0  # bottleneck m = d // reduction_factor
    nonlinearity: str = "relu"  # f
    sublayers: tuple[str, ...] = ("ffn",)  # after the FFN only
