"""Houlsby adapters: Houlsby et al., "Parameter-Efficient Transfer Learning for NLP" (ICML 2019,
arXiv:1902.00751).

Two serial bottleneck adapters per block, on the output of the attention sub-layer and of the FFN,
before the residual add::

    h ← h + y + A(y),   A(y) = up(f(down(y)))     y: (B, T, d),  down: d → m,  up: m → d

with m = d / 16 and f = swish by default (AdapterHub's ``DoubleSeqBnConfig``). The paper starts
from a near-identity adapter and also trains the layer norms: ``init: houlsby`` (truncated normal,
std 1e-2) and ``train_norms: true``; the default ``init: zero_up`` starts exactly at the base model.
Parameters per adapter: 2·d·m + m + d (+ 2d per ``ln_before``/``ln_after``, + the norm's d with
``train_norms``). The module, placement and AdapterDrop (``drop_lowest``) are in ``bottleneck.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.methods.hooks.bottleneck import BottleneckConfig


@dataclass(frozen=True)
class HoulsbyConfig(BottleneckConfig):
    name = "houlsby"
    reads = "branch"  # the sub-layer's output y
    reduction_factor: float = 16.0  # bottleneck m = d // reduction_factor
    nonlinearity: str = "swish"  # f
    sublayers: tuple[str, ...] = ("self", "ffn")  # after attention and after the FFN
