"""Causal self-attention for CPU training, by blocks of queries (a lever of ``train.fused_kernels``).

On CPU, SDPA's causal flash kernel runs well below the rate of plain matrix products (docs/speed.md
has the per-layer figures and the profile they come from). Queries are taken ``BLOCK`` at a time; block i (rows [a, b)) meets only
keys [0, b), the rest being masked by causality, so ~half the score matrix is never computed:

    S_i = q_i k_{<b}^T s (+ mask),   P_i = softmax(S_i),   O_i = P_i v_{<b}

with S and the softmax in float32 (the products of bf16 q and k are taken in float32, as SDPA's
flash kernel accumulates them), P_i kept for backward in q's dtype (B·H·T·(T+BLOCK)/2 elements a
layer: 9 MiB at 4x512x8 heads in bf16), and the output, dP and the gradients as SDPA's:

    dV_{<b} += P_i^T dO_i,   dP_i = dO_i v_{<b}^T,   dS_i = P_i ⊙ (dP_i − δ_i) s,   δ = rowsum(dO ⊙ O)
    dQ_i = dS_i k_{<b},      dK_{<b} += dS_i^T q_i

Measured against a float64 reference on bf16 inputs, its errors are SDPA's own (relative 5.7e-3 on
the output, 8.2e-3 on dQ, against SDPA's 5.5e-3 and 8.0e-3). ``takes`` says when it applies: CPU,
autograd recording or a module in training, no attention dropout, causal with no mask and as many keys as queries, or a
boolean mask that attends nothing above the diagonal of the last T keys and something in every row
(a padded batch's; prefix tuning's n rows before the keys, visible to every query, ride along as
keys [0, n)), and a memory budget for the kept probabilities; otherwise SDPA runs as before.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch

BLOCK = 64  # query rows per block (64-128 measured alike at 512 positions; 64 skips more)
MAX_KEPT_BYTES = 256 << 20  # the kept probabilities of one layer; beyond this SDPA (O(T) memory) runs


class _BlockCausal(torch.autograd.Function):
    """Queries [a, b) meet keys [0, n + b): the n keys before the queries' own (a prefix's rows; 0
    without) and their own up to the block's diagonal square, where the upper triangle is masked."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float):
        with torch.autocast("cpu", enabled=False):
            t, n = q.shape[2], k.shape[2] - q.shape[2]
            out = torch.empty_like(q)
            qf, kf = q.float() * scale, k.float()  # the scale on q: a pass over (T, D), not (T, T)
            probs = []
            for a in range(0, t, BLOCK):
                b = min(a + BLOCK, t)
                s = torch.matmul(qf[:, :, a:b], kf[:, :, : n + b].transpose(-2, -1))  # (B, H, c, n + b)
                s[..., n + a :].masked_fill_(_upper(b - a, q.device), float("-inf"))
                if mask is not None:
                    s.masked_fill_(~mask[:, :, a:b, : n + b], float("-inf"))
                p = torch.softmax(s, dim=-1).to(q.dtype)
                torch.matmul(p, v[:, :, : n + b], out=out[:, :, a:b])
                probs.append(p)
        ctx.save_for_backward(q, k, v, out, *probs)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, *probs = ctx.saved_tensors
        scale, t, n = ctx.scale, q.shape[2], k.shape[2] - q.shape[2]
        with torch.autocast("cpu", enabled=False):
            grad_out = grad_out.to(q.dtype).contiguous()
            dq = torch.empty_like(q, dtype=torch.float32)
            dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
            dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
            gf, vf = grad_out.float(), v.float()
            delta = (gf * out.float()).sum(-1, keepdim=True)  # (B, H, T, 1)
            for i, a in enumerate(range(0, t, BLOCK)):
                b = min(a + BLOCK, t)
                p, g, keys = probs[i], grad_out[:, :, a:b], slice(0, n + b)
                dv[:, :, keys] += torch.matmul(p.transpose(-2, -1), g)
                dp = torch.matmul(gf[:, :, a:b], vf[:, :, keys].transpose(-2, -1))  # float32, as S
                ds = dp.sub_(delta[:, :, a:b]).mul_(p).to(q.dtype)  # dS / s: the scale goes on dQ, dK
                dq[:, :, a:b] = torch.matmul(ds, k[:, :, keys])
                dk[:, :, keys] += torch.matmul(ds.transpose(-2, -1), q[:, :, a:b])
        return dq.mul_(scale).to(q.dtype), dk.mul_(scale).to(k.dtype), dv.to(v.dtype), None, None


_UPPER: dict = {}


def _upper(n: int, device) -> torch.Tensor:
    """The (n, n) strictly-upper-triangular bool mask: what a block's own diagonal square hides."""
    key = (n, str(device))
    if key not in _UPPER:
        _UPPER[key] = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)
    return _UPPER[key]


_checked: list = [lambda: None, None, False]  # (a weak reference to the last mask, its version, the
# verdict): every layer of a forward gets the same mask, checked once; a weak reference pins no memory


def _causal_mask_ok(mask: torch.Tensor) -> bool:
    """A (B, 1|H, T, n + T) boolean mask that attends nothing above the diagonal of its last T keys
    (bottom-right aligned, so the blocks may skip those keys) and something in every row (a row of
    -inf would be NaN, where SDPA has its own rule)."""
    if _checked[0]() is mask and _checked[1] == mask._version:
        return _checked[2]
    t = mask.shape[-2]
    ok = bool(not mask[..., -t:].triu(1).any() and mask.any(-1).all())
    _checked[:] = [weakref.ref(mask), mask._version, ok]
    return ok


def takes(query: torch.Tensor, key: torch.Tensor, mask: Optional[torch.Tensor], dropout: float,
          causal: bool, training: bool = False) -> bool:
    """Whether the block path computes this attention call (see the module's docstring): with
    autograd recording, or for a module in training mode (so a checkpointed layer's first forward,
    without grad, and its recomputation take the same path and agree to the bit)."""
    if query.device.type != "cpu" or dropout > 0 or torch.compiler.is_compiling():
        return False  # compiled: inductor has its own plan for SDPA
    if not (training or torch.is_grad_enabled()):
        return False
    b, h, t, _ = query.shape
    kv = key.shape[2]
    dtype = _dtype(query, key)
    if kv < t or t < 2 * BLOCK or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if b * h * t * (t + BLOCK + 2 * (kv - t)) // 2 * dtype.itemsize > MAX_KEPT_BYTES:
        return False
    if mask is None:
        return causal and kv == t  # SDPA's is_causal with more keys than queries aligns top-left
    return (mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[-2:] == (t, kv)
            and _causal_mask_ok(mask))


def block_causal_attention(query, key, value, mask: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """softmax(q k^T s + causal mask [+ mask]) v, (B, H, T, D), by blocks of queries (``takes`` first)."""
    if mask is not None and mask.shape[1] not in (1, query.shape[1]):
        raise ValueError(f"attention mask with {mask.shape[1]} heads for {query.shape[1]}")
    dtype = _dtype(query, value)
    query, key, value = (x.to(dtype) for x in (query, key, value))  # autocast's cast, as SDPA's
    return _BlockCausal.apply(query, key, value, mask, scale)


def _dtype(query: torch.Tensor, value: torch.Tensor) -> torch.dtype:
    """The dtype SDPA computes in: autocast's (it casts SDPA's inputs: LLaMA's rotary leaves q and k
    float32 under autocast, v not), else the inputs' promoted dtype."""
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return torch.promote_types(query.dtype, value.dtype)
