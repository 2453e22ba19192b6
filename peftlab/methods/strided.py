"""Fixed strided/local sparse attention from Generating Long Sequences with Sparse Transformers
(Child et al., 2019, arXiv:1904.10509), §4.2, the two patterns of one "merged" head::

    A_i = { j ≤ i : i − j < l }  ∪  { j ≤ i − l : j mod s = s − 1 }
          local window:               every s-th token before the window:
          the previous l tokens        the "summary" positions s−1, 2s−1, ...

    out_i = softmax_{j ∈ A_i}(q_i k_jᵀ · d^-½) v_j

so a token reaches any earlier one in two hops (through the summary at the end of its stride),
with l + n/s keys per query instead of n. The paper's strided head counts its stride back from each
query, (i − j) mod s = 0, which gives every query its own key set; anchoring the summaries at fixed
positions (as the paper's *fixed* pattern does, with c = 1) lets all queries share one gathered
set of n/s summary keys, so the whole pattern is one SDPA call on blocks::

    q: (B, H, n, d) -> (n/l, B·H, l, d)                       query blocks of l tokens
    k: (n/l, B·H_kv, P + n/s + 2l, d)                          [prefix rows; summaries; blocks c−1, c]
    mask: (n/l, 1, l, P + n/s + 2l) additive, built once per length, broadcast over B·H

one exact softmax over the union (no key counted twice: summaries inside the window are reached
through the window). Memory and time O(n·(l + n/s)); with l = s = √n, O(n^1.5).

Used while training; at evaluation and in ``generate`` the model attends densely unless
``inference: true`` (then the pattern also runs there, the KV-cache steps through a mask over
the cache, O(l + n/s) of it open per query). Rows padded on the left are anchored at their first
real token (``sparse_attention.py``). Trainable parameters: none of its own (see ``s2_attn.py``
for composition with LoRA, LLaMA-Adapter and prefix tuning, which are the same here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from peftlab.methods.hooks.sparse_attention import (
    SparseAttentionConfig,
    SparseCore,
    blocks,
    causal_blocks,
    first_real,
    repeat_blocks,
    sdpa,
    unblock,
)

_MASK: dict = {}  # one entry: every layer of a step shares the mask of one length


def block_mask(n: int, window: int, stride: int, n_extra: int, dtype, device) -> torch.Tensor:
    """``(n/l, 1, l, P + n/s + 2l)`` additive (0 / -inf, in the queries' dtype, so SDPA uses it as it
    is): which of a block's keys each of its queries attends to."""
    key = (n, window, stride, n_extra, dtype, str(device))
    if key not in _MASK:
        nb, l = -(-n // window), window
        i = torch.arange(nb * l, device=device).view(nb, l, 1)  # query positions
        summary = torch.arange(stride - 1, n, stride, device=device)  # (n/s,)
        local = (torch.arange(nb, device=device).view(nb, 1, 1) - 1) * l + torch.arange(2 * l, device=device)
        allowed = torch.cat([torch.ones(nb, l, n_extra, dtype=torch.bool, device=device),
                             summary <= i - l,
                             (local > i - l) & (local <= i) & (local >= 0)], dim=-1)
        _MASK.clear()
        additive = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
        _MASK[key] = additive[:, None]
    return _MASK[key]


def neighbour_blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, h, n, d)`` -> ``(g, B·h, 2·size, d)``: for block c, the tokens of blocks c−1 and c."""
    b, h, n, d = x.shape
    g = -(-n // size)
    x = F.pad(x, (0, 0, size, g * size - n)).view(b, h, g + 1, size, d)
    pairs = torch.cat([x[:, :, :-1], x[:, :, 1:]], dim=3)  # (B, h, g, 2·size, d)
    return pairs.permute(2, 0, 1, 3, 4).reshape(g, b * h, 2 * size, d)


class StridedSparseAttention(SparseCore):
    method = "strided"

    def __init__(self, window: int, stride: int, inference: bool):
        super().__init__()
        self.window, self.stride, self.inference = window, stride, inference

    def engaged(self, module) -> bool:
        return module.training or self.inference

    def pattern(self, query, key, value, extra, scale, dropout):
        b, _, n, _ = query.shape
        if self.window >= n:  # every earlier token is in the window: dense
            return causal_blocks(query, key, value, n, extra, scale, dropout)
        l, s = self.window, self.stride
        qb = blocks(query, l)  # (g, B·H, l, d)
        g = qb.shape[0]
        parts = [(extra[0], extra[1])] if extra is not None else []
        parts.append((key[:, :, s - 1::s], value[:, :, s - 1::s]))  # summaries: (B, H_kv, n/s, d)
        kb = torch.cat([repeat_blocks(k, g) for k, _ in parts] + [neighbour_blocks(key, l)], dim=2)
        vb = torch.cat([repeat_blocks(v, g) for _, v in parts] + [neighbour_blocks(value, l)], dim=2)
        mask = block_mask(n, l, s, 0 if extra is None else extra[0].shape[2], query.dtype, query.device)
        return unblock(sdpa(qb, kb, vb, mask, scale=scale, dropout=dropout), b, n)

    def decode(self, module, query, key, value, mask, *, base, n_extra, keep, **kwargs):
        """Queries after a KV cache: the pattern as a mask over the cache, ``(B, 1, q, P + kv)``."""
        b, q, kv = query.shape[0], query.shape[2], key.shape[2] - n_extra
        starts = first_real(keep, b)
        starts = torch.zeros(b, dtype=torch.long, device=query.device) if starts is None else starts
        q_pos = torch.arange(kv - q, kv, device=query.device)[None] - starts[:, None]  # (B, q), from the first real
        k_pos = torch.arange(kv, device=query.device)[None] - starts[:, None]  # (B, kv)
        back = q_pos[:, :, None] - k_pos[:, None, :]  # (B, q, kv): how far back each key is
        allowed = (back >= 0) & ((back < self.window) | (k_pos % self.stride == self.stride - 1)[:, None, :])
        if keep is not None:
            allowed = (allowed & keep[:, None, :]) | (back == 0)  # a padding query still sees itself
        allowed = F.pad(allowed, (n_extra, 0), value=True)[:, None]
        out = sdpa(query, key, value, allowed, scale=kwargs.get("scaling"))
        return out.transpose(1, 2), None

    def extra_repr(self) -> str:
        return f"window={self.window}, stride={self.stride}, inference={self.inference}"


@dataclass(frozen=True)
class StridedConfig(SparseAttentionConfig):
    name = "strided"
    needs_table = "the attention modules"  # from a family table
    slot = "strided"
    window: int = 128  # l: each token attends to the previous l tokens (itself included)
    stride: int = 128  # s: ... and to every s-th token before its window (positions s-1, 2s-1, ...)
    inference: bool = False  # also use the pattern at evaluation and in generate (default: dense there)

    def __post_init__(self):
        super().__post_init__()
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    def describe(self) -> str:
        at_inference = " (inference too)" if self.inference else ""
        return self._describe(f"strided l={self.window} s={self.stride}{at_inference}")

    def training_only(self) -> bool:
        return super().training_only() and not self.inference

    def core(self) -> StridedSparseAttention:
        return StridedSparseAttention(self.window, self.stride, self.inference)
