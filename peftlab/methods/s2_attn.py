"""S²-Attn, shifted sparse attention, from LongLoRA: Efficient Fine-tuning of Long-Context Large
Language Models (Chen et al., 2023, arXiv:2309.12307), §3.2.

While training, the sequence is cut into groups of G tokens and each token attends causally
within its group only; half of the heads see the groups shifted by G/2, so information flows
between neighbouring groups::

    heads [0, H/2):  groups [0, G), [G, 2G), ...            softmax(q Kᵀ·d^-½ + causal) V per group
    heads [H/2, H):  groups [0, G/2), [G/2, 3G/2), ...

    q: (B, H, n, d) -> (B·n/G, H/2, G, d) per half, one SDPA call each: O(n·G) time and memory

At evaluation and in ``generate`` the model attends densely (the paper's point: trained sparse,
deployed as the plain model), so the method has no inference form of its own: LoRA trained with
it exports and merges as plain LoRA. G is ``group_size`` tokens, or ``group_fraction`` of the
batch's padded length (LongLoRA: 1/4). A sequence no longer than one group is attended densely
by every head (with one group there is no neighbour for the shift to reach).

Causality. LongLoRA's PyTorch reference rolls the shifted heads by G/2, which wraps the first
G/2 tokens into the last group behind the last G/2 tokens: in a causal LM they would see the
end of the sequence. Its flash-attention path cuts the shifted heads into [0, G/2), [G/2, 3G/2),
..., which is causal; so do we: the shifted heads run as the groups of x[G/2:] plus the short
group x[:G/2], so no token depends on a later one.

Trainable parameters: none of its own. Combine it with LoRA, LLaMA-Adapter (output adders run on
top of the sparse core), or LongLoRA's "+embed, +norm" (``train_embeddings``, ``train_norms``).
Prefix tuning's rows are visible to every group (global context, as in dense attention).
Decoder-only: on T5 a ``ModelError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch

from peftlab.methods.hooks.sparse_attention import SparseAttentionConfig, SparseCore, causal_blocks


class ShiftedSparseAttention(SparseCore):
    method = "s2_attn"

    def __init__(self, group_size: int, group_fraction: float):
        super().__init__()
        self.group_size, self.group_fraction = group_size, group_fraction

    def group(self, n: int) -> int:
        return self.group_size or max(1, math.ceil(n * self.group_fraction))

    def pattern(self, query, key, value, extra, scale, dropout):
        n, heads, kv_heads = query.shape[2], query.shape[1], key.shape[1]
        size = self.group(n)
        if size >= n:  # one group: dense
            return causal_blocks(query, key, value, n, extra, scale, dropout)
        if kv_heads % 2:  # the halves must split the key/value heads too: repeat them (GQA)
            rep = heads // kv_heads
            key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
            extra = None if extra is None else tuple(x.repeat_interleave(rep, 1) for x in extra)
            kv_heads = heads
        split_q, split_kv, shift = heads // 2, kv_heads // 2, size // 2

        def run(lo: int, hi: int, upper: bool, size: int):  # tokens [lo, hi) of the lower/upper heads
            hq = slice(split_q, heads) if upper else slice(0, split_q)
            hk = slice(split_kv, kv_heads) if upper else slice(0, split_kv)
            ex = None if extra is None else (extra[0][:, hk], extra[1][:, hk])
            return causal_blocks(query[:, hq, lo:hi], key[:, hk, lo:hi], value[:, hk, lo:hi], size, ex, scale,
                                 dropout)

        outs = [run(0, n, False, size)] if split_q else []  # unshifted heads: groups [0, G), [G, 2G), ...
        if shift:  # shifted heads: [0, G/2), then [G/2, 3G/2), ...
            outs.append(torch.cat([run(0, shift, True, shift), run(shift, n, True, size)], dim=1))
        else:
            outs.append(run(0, n, True, size))
        return torch.cat(outs, dim=2)  # (B, n, H, d)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}" if self.group_size else f"group_fraction={self.group_fraction}"


@dataclass(frozen=True)
class S2AttnConfig(SparseAttentionConfig):
    name = "s2_attn"
    needs_table = "the attention modules"  # from a family table
    slot = "s2_attn"
    group_size: int = 0  # G in tokens; 0 = group_fraction of each batch's (padded) length
    group_fraction: float = 0.25  # G / n when group_size is 0 (LongLoRA's group_size_ratio, 1/4)

    def __post_init__(self):
        super().__post_init__()
        if self.group_size < 0:
            raise ValueError(f"group_size must be >= 0 (0 = use group_fraction), got {self.group_size}")
        if not 0 < self.group_fraction <= 1:
            raise ValueError(f"group_fraction must be in (0, 1], got {self.group_fraction}")

    def describe(self) -> str:
        g = f"G={self.group_size}" if self.group_size else f"G={self.group_fraction:g}n"
        return self._describe(f"S²-Attn {g}")

    def core(self) -> ShiftedSparseAttention:
        return ShiftedSparseAttention(self.group_size, self.group_fraction)
