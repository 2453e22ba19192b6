"""Pooling a per-position value over a sequence without reading later tokens or padding, carried
through the KV cache. UniPELT's gates use it (``unipelt.py``).

A gate reads ``s_t = σ(W x_t + b)`` at each position t of its input ``x`` (B, T, d) and pools it
with the attention mask ``m_t`` (1 = a real token, 0 = padding)::

    causal     G_t = Σ_{u≤t} m_u s_u / max(1, Σ_{u≤t} m_u)      (B, T, 1)  a causal stack (LLaMA, GPT-2,
                                                                          T5's decoder)
    sequence   G   = Σ_u m_u s_u / max(1, Σ_u m_u)              (B, 1, 1)  a bidirectional input (T5's
                                                                          encoder; the encoder states
                                                                          a cross-attention's k/v read)
    reference  G   = mean_u s_u                                 (B, 1, 1)  every position of the call,
                                                                          padding included

The first two are ``gate_pooling: causal``: no position's gate reads a later token (teacher forcing
cannot pass the answer through a gate), and no gate reads padding (a row's outputs do not depend on
the rows it is batched with). An encoder sees its whole input at once, so pooling over all of it
reads nothing from the future. ``reference`` is what AdapterHub's and the paper's code compute.

One ``StackPool`` per stack (``<stack>.<method>_pool``). A forward pre-hook on the stack records the
call's 2-D attention mask (and, on T5's decoder, the encoder's), how many positions the KV cache
already holds, and the running sums ``Σ_{u≤t} m_u s_u`` the cache carries for each causal gate; a
forward hook stores the new running sums, one per position, on the cache the stack returns. So a
step of cached generation continues each gate's mean exactly where the previous step left it, and
``generate`` gives the full forward's logits. A cropped cache (assisted decoding) drops the sums of
the cropped positions; beam search reorders them with the cache's rows.

The recorded call stays until the stack's next call: gradient checkpointing recomputes the blocks
during backward, after the stack has returned, and must see the same masks.
"""

from __future__ import annotations

import inspect
import types
from typing import Optional

import torch
from torch import nn

from peftlab.errors import ModelError

CARRIED = "_peftlab_pooled_sums"  # attribute of a KV cache: {pool name: {gate index: (B, T) running sums}}


class StackPool(nn.Module):
    """Pools the gates of one stack (module docstring). Holds no parameters."""

    def __init__(self, name: str, causal: bool, method: str):
        super().__init__()
        self.name, self.causal, self.method = name, causal, method
        self.gates = 0  # gates pooled here; each is an index into the carried sums
        self._mask: Optional[torch.Tensor] = None  # (B, past + T) the stack's mask; None: no padding
        self._memory_mask: Optional[torch.Tensor] = None  # (B, S) the encoder states' mask
        self._past = 0  # positions already in the KV cache
        self._carried: dict[int, torch.Tensor] = {}  # gate -> (B, past) running sums from the cache
        self._new: dict[int, torch.Tensor] = {}  # gate -> (B, past + T) running sums after this call

    def add_gate(self) -> int:
        self.gates += 1
        return self.gates - 1

    def extra_repr(self) -> str:
        return f"{self.name}, {'causal' if self.causal else 'sequence'}, gates={self.gates}"

    # -- the stack's hooks ---------------------------------------------------------------------
    def record_call(self, stack, args, kwargs):
        """Forward pre-hook on the stack: its masks, and what its KV cache carries."""
        call = _arguments(stack, args, kwargs)
        self._mask = _padding_mask(call.get("attention_mask"), self.method)
        self._memory_mask = _padding_mask(call.get("encoder_attention_mask"), self.method)
        cache = call.get("cache")
        cache = call.get("past_key_values") if cache is None else cache
        self._past = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0
        self._carried, self._new = {}, {}
        if self.causal and hasattr(cache, "reorder_cache") and "reorder_cache" not in cache.__dict__:
            # beam search reorders the rows of the cache it passed in; the sums must follow them. (Here,
            # not in ``carry``: a training forward makes its cache inside, where torch.compile traces.)
            cache.reorder_cache = types.MethodType(_reorder_with_sums, cache)
        if self._past and self.causal:
            self._carried = self._from_cache(cache)

    def carry(self, stack, args, kwargs, output):
        """Forward hook on the stack: the new running sums onto the cache it returns."""
        if not self._new:
            return
        cache = _cache_of(output)
        if cache is not None:
            table = getattr(cache, CARRIED, None)
            if table is None:
                table = {}
                setattr(cache, CARRIED, table)
            table[self.name] = dict(self._new)

    def _from_cache(self, cache) -> dict[int, torch.Tensor]:
        sums = getattr(cache, CARRIED, {}).get(self.name, {})
        # longer than the cache: the cache was cropped (assisted decoding), and so are the sums
        return {i: s[:, : self._past] for i, s in sums.items() if s.shape[1] >= self._past}

    def _carried_sums(self, gate: int) -> torch.Tensor:
        sums = self._carried.get(gate)
        if sums is None:
            raise ModelError(f"{self.method}: the KV cache holds {self._past} positions but not the gates' running "
                             f"means over them; pass a cache that this model's own forward returned")
        return sums

    # -- pooling -------------------------------------------------------------------------------
    def mean(self, s: torch.Tensor, gate: int, memory: bool = False) -> torch.Tensor:
        """``s`` (B, T, 1) of this call's positions -> G: (B, T, 1) causal, (B, 1, 1) otherwise; float32."""
        s = s.float()
        if memory or not self.causal:
            m = self._memory_mask if memory else self._positions(s.shape[1])
            if m is None:
                return s.mean(dim=1, keepdim=True)
            m = _column(m, s.shape[1], self.method)
            return (s * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        m = self._positions(s.shape[1])
        sums = (s if m is None else s * _column(m, s.shape[1], self.method)).cumsum(dim=1)  # (B, T, 1)
        if self._past:
            carried = self._carried_sums(gate)
            sums = sums + carried[:, -1:, None]
            self._new[gate] = torch.cat((carried, sums[..., 0].detach()), dim=1)
        else:
            self._new[gate] = sums[..., 0].detach()
        return sums / self._counts(s.shape[1], s.device)

    def _positions(self, t: int) -> Optional[torch.Tensor]:
        """The mask of this call's t positions (B, t), the cached ones left out."""
        if self._mask is None:
            return None
        if self._mask.shape[1] != self._past + t:
            raise ModelError(f"{self.method}: the attention mask covers {self._mask.shape[1]} positions, but the "
                             f"call has {t} after {self._past} cached ones")
        return self._mask[:, self._past:]

    def _counts(self, t: int, device) -> torch.Tensor:
        """Σ_{u≤t} m_u over the cached and this call's positions: (B or 1, t, 1), at least 1."""
        if self._mask is None:
            return torch.arange(self._past + 1, self._past + t + 1, device=device, dtype=torch.float32)[None, :, None]
        return self._mask.float().cumsum(dim=1)[:, self._past:, None].clamp_min(1.0)


class PooledGate:
    """Mixin of a module with a gate ``self.gate`` (W_G: d -> 1) pooled over positions by its stack's
    ``StackPool``, or, with no pool (``gate_pooling: reference``), by the mean over the call."""

    pool: Optional[StackPool] = None
    index = 0  # the gate's running sums in the pool's (and the KV cache's) table
    memory = False  # reads the encoder states (a cross-attention's k or v), not its stack's positions

    def use_pool(self, pool: StackPool, memory: bool = False) -> None:
        object.__setattr__(self, "pool", pool)  # a plain reference: registered once, on its stack
        self.memory = memory
        self.index = pool.add_gate()

    def pooled_gate(self, x: torch.Tensor) -> torch.Tensor:
        """G: (B, T, d) -> (B, T, 1) pooled causally, or (B, 1, 1) over the whole input."""
        gate = self.gate
        if x.dtype != gate.weight.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(gate.weight.dtype)
        s = torch.sigmoid(gate(x))  # (B, T, 1)
        return s.mean(dim=1, keepdim=True) if self.pool is None else self.pool.mean(s, self.index, self.memory)


def reads_encoder(name: str, family) -> bool:
    """The linear ``name`` is a cross-attention's key or value projection: it reads the encoder states."""
    parent, _, leaf = name.rpartition(".")
    cross = family.attention.get("cross")
    return bool(cross) and parent.rsplit(".", 1)[-1] == cross and leaf in family.leaf_names("k") + family.leaf_names("v")


def _reorder_with_sums(cache, beam_idx: torch.LongTensor) -> None:
    type(cache).reorder_cache(cache, beam_idx)
    for sums in getattr(cache, CARRIED, {}).values():
        for i, s in sums.items():
            sums[i] = s.index_select(0, beam_idx.to(s.device))


def _arguments(module, args, kwargs) -> dict:
    if not args:
        return kwargs
    return inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments


def _padding_mask(mask, method: str) -> Optional[torch.Tensor]:
    if mask is not None and mask.dim() != 2:
        raise ModelError(f"{method}: got a {mask.dim()}-D attention mask; the gates need the usual 2-D (batch, "
                         f"length) padding mask to leave padding out of their means (or gate_pooling: reference)")
    return mask


def _column(mask: torch.Tensor, t: int, method: str) -> torch.Tensor:
    if mask.shape[1] != t:
        raise ModelError(f"{method}: an attention mask of {mask.shape[1]} positions for an input of {t}")
    return mask.float()[:, :, None]


def _cache_of(output):
    if isinstance(output, tuple):
        return next((o for o in output if hasattr(o, "get_seq_length")), None)
    cache = getattr(output, "cache", None)  # (a Cache may be falsy: it has a length)
    return getattr(output, "past_key_values", None) if cache is None else cache


def add_pools(model: nn.Module, family, method: str) -> dict[str, StackPool]:
    """A ``StackPool`` on each stack of the model (``<stack>.<method>_pool``) with its two hooks; the
    decoder of an encoder-decoder and every stack of a causal LM pool causally."""
    pools = {}
    for stack, blocks in family.stacks.items():
        path = blocks.rpartition(".")[0]
        module = model.get_submodule(path)
        attr = f"{method}_pool"
        if hasattr(module, attr):
            raise ModelError(f"{method}: the {stack} already pools {method} gates (applied twice?)")
        pool = StackPool(stack, family.kind == "causal" or path == family.decoder, method)
        module.add_module(attr, pool)
        module.register_forward_pre_hook(pool.record_call, with_kwargs=True)
        module.register_forward_hook(pool.carry, with_kwargs=True)
        pools[stack] = pool
    return pools
