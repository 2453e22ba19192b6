"""Parallel adapters: He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning"
(ICLR 2022, arXiv:2110.04366).

A scaled bottleneck beside the FFN: it reads the sub-layer's input and its output is added to the
sub-layer's output::

    h ← h + y + s · up(f(down(h)))     h: (B, T, d),  down: d → m,  up: m → d,  y = FFN(norm(h))

with m = d / 2, f = ReLU and s = 4 by default (the paper's best "MAM" placement; AdapterHub's
``ParBnConfig``). The adapter reads the residual stream h that enters the sub-layer (before its
norm), as AdapterHub does on T5 and LLaMA. ``sublayers: [self, ffn]`` also puts one beside the
attention. Up-projection starts at zero (``init: zero_up``), so the model starts as the base model.
Parameters per adapter: 2·d·m + m + d. Module, placement, AdapterDrop: ``bottleneck.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.methods.hooks.bottleneck import BottleneckConfig


@dataclass(frozen=True)
class ParallelAdapterConfig(BottleneckConfig):
    name = "parallel"
    reads = "residual"  # h, the input of the sub-layer
    reduction_factor: float = 2.0  # bottleneck m = d // reduction_factor
    nonlinearity: str = "relu"  # f
    sublayers: tuple[str, ...] = ("ffn",)  # beside the FFN
    scaling: float = 4.0  # s
