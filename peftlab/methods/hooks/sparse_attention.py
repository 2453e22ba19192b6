"""What the sparse attention methods share (``s2_attn.py``, ``strided.py``): their config base,
the attention core that reads the model's padding, and causal attention in blocks.

A sparse method is an attention *core* on the hook point (``attention.py``): it replaces the
attention computation of the chosen layers' self-attention and has no parameters of its own. Its
pattern is computed without any n×n tensor: the sequence is cut into blocks of the pattern's size
and SDPA runs on ``(B·blocks, H, block, d)`` with at most a block-sized mask, so memory and time
grow as ``n·block``, not ``n²``.

Padding. The core sees the model's 4-D mask (causal + padding). It reads which keys are padding
from the mask's last query row (which sees every earlier real key) and checks, once per mask
tensor, that the mask is exactly causal + padding, each row's real tokens one contiguous run (a
sliding window, packed sequences or a custom mask is a ``ModelError``, never silently ignored).
Rows padded on the left are rotated so their real tokens start at index 0, computed, and rotated
back: a pattern is anchored at each sequence's first real token (as LongLoRA's unpadded flash
path anchors its groups), so a left-padded row gives the same outputs as the same row unpadded.
Padding at the end of a row needs no mask at all: a causal pattern never looks ahead, so no real
token can see it. Padding queries get a zero attention output, as a fully masked row of HF's dense
mask does (with left padding, the last padding position's logits predict the first real token, so
they must not see any real token).

Prefix tuning's rows (key/value extenders, ``n_extra`` rows before the keys) are global context:
every query of every block attends to them, as it does in dense attention.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.hooks.attention import AttentionCore, attach
from peftlab.methods.base import BaseWeights, MethodConfig


# ------------------------------------------------------------------------------------------------
# Padding: read, check and undo it
# ------------------------------------------------------------------------------------------------
_LAST: list = [None, None]  # (weakref to the last mask read, its key validity): layers share one mask


def key_validity(mask, n_extra: int, q: int, kv: int, who: str) -> torch.Tensor | None:
    """``(B, kv)`` bool, True where a key is a real token; ``None`` when the mask hides nothing
    but the future (no padding). ``ModelError`` when the mask is not causal + contiguous padding."""
    if mask is None:
        return None
    if _LAST[0] is not None and _LAST[0]() is mask:
        return _LAST[1]
    allowed = (mask if mask.dtype == torch.bool else mask == 0)[:, 0]  # (B|1, q, P + kv); eager: 0 = attend
    keep = allowed[:, -1, n_extra:]  # the last query sees every real key
    cols = torch.arange(kv, device=mask.device)
    expected = (cols[None, :] <= torch.arange(kv - q, kv, device=mask.device)[:, None]) & keep[:, None, :]
    ok = (allowed[..., n_extra:] == expected).all() & allowed[..., :n_extra].all()  # padding rows too
    runs = keep[:, :1].sum(1) + (keep[:, 1:] & ~keep[:, :-1]).sum(1)  # starts of runs of real tokens
    if not bool(ok) or bool((runs > 1).any()):
        raise ModelError(f"{who}: the attention mask is not causal + padding (a sliding window, packed sequences "
                         f"or a custom mask?); sparse attention supports sequences padded on the left or right")
    keep = None if bool(keep.all()) else keep
    _LAST[:] = [weakref.ref(mask), keep]
    return keep


def first_real(keep: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Index of each row's first real token ``(B,)``, or ``None`` when every row starts at 0."""
    if keep is None:
        return None
    starts = keep.int().argmax(1).expand(batch)  # all-padding rows: 0
    return None if not bool(starts.any()) else starts


def rotate(x: torch.Tensor, starts: torch.Tensor, dim: int, back: bool = False) -> torch.Tensor:
    """Rotate each row's sequence axis ``dim`` left by ``starts[b]`` (right with ``back``)."""
    n = x.shape[dim]
    shift = -starts if back else starts
    idx = (torch.arange(n, device=x.device)[None, :] + shift[:, None]) % n  # (B, n): new t <- old idx
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = n
    return x.gather(dim, idx.view(shape).expand_as(x))


# ------------------------------------------------------------------------------------------------
# Attention in blocks
# ------------------------------------------------------------------------------------------------
def sdpa(q, k, v, mask=None, causal=False, scale=None, dropout=0.0) -> torch.Tensor:
    """SDPA with grouped-query heads (``k``/``v`` may have fewer heads than ``q``)."""
    gqa = k.shape[1] != q.shape[1]
    if gqa and mask is not None and q.device.type != "cpu":  # GPU kernels take GQA only without a mask
        k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
        gqa = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                          scale=scale, enable_gqa=gqa)


def blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, h, n, d)`` -> ``(g, B·h, size, d)``, g = ceil(n / size), zeros after the end. Blocks
    lead and the batch joins the heads, so a per-block mask ``(g, 1, size, k)`` broadcasts over
    both without a copy (GQA stays right: query head b·H + i uses key/value head b·H_kv + i·H_kv/H)."""
    b, h, n, d = x.shape
    g = -(-n // size)
    if g * size != n:
        x = F.pad(x, (0, 0, 0, g * size - n))
    return x.view(b, h, g, size, d).permute(2, 0, 1, 3, 4).reshape(g, b * h, size, d)


def unblock(out: torch.Tensor, batch: int, n: int) -> torch.Tensor:
    """``(g, B·h, size, d)`` -> ``(B, n, h, d)`` (the layout attention functions return)."""
    g, bh, size, d = out.shape
    return out.view(g, batch, bh // batch, size, d).permute(1, 0, 3, 2, 4).reshape(batch, g * size, -1, d)[:, :n]


def repeat_blocks(x: torch.Tensor, g: int) -> torch.Tensor:
    """``(B, h, r, d)`` -> ``(g, B·h, r, d)``: the same rows for each of a row's g blocks (a view)."""
    b, h, r, d = x.shape
    return x.reshape(1, b * h, r, d).expand(g, -1, -1, -1)


def causal_blocks(q, k, v, size: int, extra=None, scale=None, dropout=0.0) -> torch.Tensor:
    """Causal attention within consecutive blocks of ``size`` tokens (the last one may be short),
    plus the ``extra`` key/value rows ``(B, h_kv, P, d)`` visible to every query: ``(B, n, h, d)``."""
    b, _, n, _ = q.shape
    size = min(size, n)
    qb, kb, vb = blocks(q, size), blocks(k, size), blocks(v, size)
    if extra is None:
        return unblock(sdpa(qb, kb, vb, causal=True, scale=scale, dropout=dropout), b, n)
    ek, ev = extra
    g, p = qb.shape[0], ek.shape[2]
    kb, vb = torch.cat([repeat_blocks(ek, g), kb], 2), torch.cat([repeat_blocks(ev, g), vb], 2)
    tril = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    mask = F.pad(tril, (p, 0), value=True)  # (size, P + size): the extra rows, then causal
    return unblock(sdpa(qb, kb, vb, mask, scale=scale, dropout=dropout), b, n)


# ------------------------------------------------------------------------------------------------
# The core and the config every sparse method shares
# ------------------------------------------------------------------------------------------------
class SparseCore(AttentionCore):
    """Runs ``pattern`` on whole sequences (no KV cache) when ``engaged``, else the replaced
    implementation (dense attention), and ``decode`` on queries that follow a cache."""

    def engaged(self, module) -> bool:
        return module.training

    def pattern(self, query, key, value, extra, scale, dropout) -> torch.Tensor:
        """Causal sparse attention over a whole sequence whose real tokens start at 0: ``query``
        ``(B, H, n, d)``, ``key``/``value`` ``(B, H_kv, n, d)``, ``extra`` the prefix rows or None;
        returns ``(B, n, H, d)``."""
        raise NotImplementedError

    def decode(self, module, query, key, value, mask, *, base, n_extra, keep, **kwargs):
        """Queries after a KV cache (``q < kv``): dense unless a method overrides it."""
        return base(module, query, key, value, mask, **kwargs)

    def attend(self, module, query, key, value, attention_mask, *, base, n_extra, is_causal, **kwargs):
        if not self.engaged(module):
            return base(module, query, key, value, attention_mask, **kwargs)
        if not is_causal:
            raise ModelError(f"{self.method}: {type(module).__name__} is not causal; sparse patterns are causal")
        q, kv = query.shape[2], key.shape[2] - n_extra
        keep = key_validity(attention_mask, n_extra, q, kv, self.method)
        if q != kv:
            return self.decode(module, query, key, value, attention_mask, base=base, n_extra=n_extra, keep=keep,
                               **kwargs)
        extra = (key[:, :, :n_extra], value[:, :, :n_extra]) if n_extra else None
        key, value = key[:, :, n_extra:], value[:, :, n_extra:]
        starts = first_real(keep, query.shape[0])
        if starts is not None:  # left padding: real tokens to the front, padding behind them
            query, key, value = (rotate(x, starts, 2) for x in (query, key, value))
        dropout = kwargs.get("dropout", 0.0) if module.training else 0.0
        out = self.pattern(query, key, value, extra, kwargs.get("scaling"), dropout)
        if starts is not None:
            out = rotate(out, starts, 1, back=True)
        if keep is not None:  # padding queries attend to nothing, as under HF's dense mask: rotated behind
            out = out.masked_fill(~keep[:, :, None, None], 0.0)  # the real tokens, they would see later ones
        return out, None




@dataclass(frozen=True)
class SparseAttentionConfig(MethodConfig):
    slot: ClassVar[str] = ""  # attention.<slot>: the core on each sparse layer
    lr_grid = None  # changes how attention trains, not what: the methods it is composed with pick the rate
    layers: tuple[int, ...] = ()  # indices of the blocks whose self-attention is sparse; () = every block
    train_embeddings: bool = False  # LongLoRA's "+embed": also train the input embeddings (tied LM head too)
    train_norms: bool = False  # LongLoRA's "+norm": also train every RMSNorm (blocks and final)

    def __post_init__(self):
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in self.layers):
            raise ValueError(f"layers must be block indices >= 0, got {list(self.layers)}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers lists a block twice: {list(self.layers)}")

    def core(self) -> SparseCore:
        raise NotImplementedError

    def training_only(self) -> bool:
        return not (self.train_embeddings or self.train_norms)

    def _describe(self, text: str) -> str:
        extras = [w for w, on in (("embeddings", self.train_embeddings), ("norms", self.train_norms)) if on]
        layers = f" layers={','.join(map(str, self.layers))}" if self.layers else ""
        return text + layers + (f" +{'+'.join(extras)}" if extras else "")

    def apply(self, model: nn.Module, family) -> list[nn.Module]:
        if family.kind != "causal":
            raise ModelError(f"{self.name}: the {family.name} family is not supported: the pattern is causal (each "
                             f"token attends to earlier ones), and a {family.name} encoder is not (every token sees "
                             f"the whole input); use a decoder-only model")
        blocks_ = family.blocks(model)
        chosen = set(self.layers) or {i for _, i, _ in blocks_}
        beyond = sorted(i for i in chosen if i >= len(blocks_))
        if beyond:
            raise ModelError(f"{self.name}: layers {beyond} do not exist (the model has {len(blocks_)} blocks)")
        added: list[nn.Module] = []
        for stack, i, block in blocks_:
            if i in chosen:
                for name, _ in family.sublayers(block, "self"):
                    core = self.core()
                    attach(model, f"{family.stacks[stack]}.{i}.{name}", self.slot, core)
                    added.append(core)
        params = []
        if self.train_embeddings:
            params += list(model.get_submodule(family.embeddings).parameters())
        if self.train_norms:
            norms = [m for _, _, block in blocks_ for _, m in family.block_norms(block)]
            norms += [model.get_submodule(path) for path in family.final_norms]
            params += [p for norm in norms for p in norm.parameters()]
        return added + ([BaseWeights(params)] if params else [])
