"""The attention hook point (docs/design.md, "Where methods plug in", point 3).

transformers 5 routes every T5 / LLaMA attention call through ``ALL_ATTENTION_FUNCTIONS[name]``
and builds its masks through ``ALL_MASK_ATTENTION_FUNCTIONS[name]``. ``use_attention_hook(model)``
registers a peftlab attention function under ``peftlab_sdpa`` (mask builder: transformers'
``sdpa_mask``) or ``peftlab_eager`` (mask builder: ``eager_mask``), after the implementation the
model used (SDPA where it supports it, else eager), and switches the model to it. The name records
the replaced implementation (``base_implementation(model)``). With nothing attached, the function
is one dict lookup and a call of the stock implementation: same logits, same speed.

Extensions
----------
A method attaches ``AttentionExtension`` modules to attention modules with
``attach(model, attention_name, slot, extension)``: ``extension`` becomes the registered submodule
``<attention_name>.<slot>`` (parameter names like ``...SelfAttention.prefix.key``, so saving,
loading and ``PeftState`` work unchanged) and joins the attention module's extension table. Per
call the function runs, in this order:

(a) **Key/value extenders** (``KVExtender``, e.g. prefix tuning).
    ``extra_kv(module, key) -> (k, v)``, each ``(1 or B, H_kv, P, head_dim)`` in ``key.dtype``.
    The rows of all extenders are prepended to the layer's keys/values (after RoPE and after the KV
    cache update: cached keys never hold them, so ``generate`` works unchanged). The mask gets P
    leading columns that every query attends to (``True`` / ``0.0``), T5's ``position_bias`` gets P
    leading zero columns (extra rows have no relative position).
    ``extra_kv`` may also return a third tensor ``g``, ``(B, 1, 1 or q, 1)``: a factor on that
    extender's keys and values, per example or per query (UniPELT's causal prefix gate: the query at
    t sees ``g_t k``, ``g_t v``). One per example scales the rows; one per query cannot (the rows are
    shared by every query), so the call is widened instead: ``q' = [q, g q]``, the plain rows' keys
    and values become ``[k, 0]``, the gated rows' ``[0, k]``, and ``out = out'_1 + g out'_2``, which
    is exactly the attention over the gated rows, with the same softmax, on the same base function.
(b) **One core** (``AttentionCore``, e.g. S²-Attn or a strided pattern), which replaces the
    attention computation itself. At most one per attention module: a second one is a
    ``ModelError`` naming both methods. Contract of ``AttentionCore.attend``::

        attend(module, query, key, value, attention_mask, *, base, n_extra, is_causal, **kwargs)
            -> (out, weights)

    - ``module``: the HF attention module (``LlamaAttention``, ``T5Attention``); ``module.layer_idx``,
      ``module.num_key_value_groups`` (LLaMA GQA) and ``module.training`` are there.
    - ``query``: ``(B, H, q, d)``; ``key``/``value``: ``(B, H_kv, n_extra + kv, d)``, RoPE applied
      (LLaMA), cache included (``kv >= q``; during ``generate`` q is 1 and kv the whole past),
      ``n_extra`` rows from extenders first. ``H_kv < H`` under GQA: repeat with
      ``transformers.integrations.sdpa_attention.repeat_kv`` or use SDPA's ``enable_gqa``.
    - ``attention_mask``: what the model's mask builder made for the replaced implementation,
      extended for the extra rows: ``None``, or a bool tensor ``(B or 1, 1, q, n_extra + kv)``
      (True = attend; SDPA base), or a float additive tensor of the same shape (0 or dtype-min;
      eager base). ``None`` means no padding anywhere; causality then comes from ``is_causal``
      alone. A materialised mask already contains causality and padding (bottom-right aligned:
      query i sits at key position ``kv - q + i``).
    - ``is_causal``: the module's causality (``kwargs["is_causal"]`` if the model passed it, else
      ``module.is_causal``): True for LLaMA and T5 decoder self-attention, False for T5 encoder and
      cross-attention. It is a property of the layer, not of this call: with ``q == 1`` there is
      nothing to hide.
    - ``kwargs``: what the model passed: ``scaling`` (LLaMA ``d**-0.5``; T5 1.0), ``dropout``
      (already 0.0 in eval mode), for T5 ``position_bias`` ``(1 or B, H, q, n_extra + kv)`` (add it
      to the scores; T5 has no scaling), others (``position_ids``, ``output_attentions``) to ignore.
    - ``base``: the replaced implementation, ``base(module, query, key, value, mask, **kwargs)`` (it
      handles GQA, masks and ``position_bias``): call it on sub-blocks, or on everything to fall
      back (e.g. at inference, where S²-Attn uses full attention).
    - Returns ``out`` ``(B, q, H, d)`` (the layout the stock functions return; the model reshapes
      it to ``(B, q, H·d)`` and applies the output projection) and attention weights or None.
(c) **Output adders** (``OutputAdder``, e.g. LLaMA-Adapter's gated prompt attention).
    ``delta(module, query, scaling) -> (B, q, H, d)``, summed onto the core's output.

A method's ``apply`` attaches one extension per attention module it changes, e.g. a sparse core::

    class ShiftedSparse(AttentionCore):        # an AdapterModule: parameters (if any) it declares
        method = "s2_attn"                     # named in errors (two cores on one module)
        def attend(self, module, query, key, value, attention_mask, *, base, n_extra, is_causal, **kw):
            if not module.training:
                return base(module, query, key, value, attention_mask, **kw)   # full attention
            ...                                # grouped attention, returns (out (B, q, H, d), None)

    for name, _ in attention_modules(model, family, kinds=("self",)):
        attach(model, name, "sparse", ShiftedSparse())   # -> <name>.sparse, switches the model

``extensions(attention)`` lists what is attached. Any number of extenders and adders and one core
compose on one module (prefix + sparse + LLaMA-Adapter). A model without any extension keeps using
the stock functions; ``generate`` (KV cache), bf16 autocast and gradient checkpointing go through
the same path. ``deepcopy`` copies the extension tables along with the modules they point to;
``apply_methods`` undoes attachments and the implementation switch when a later method fails.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule

if TYPE_CHECKING:
    from peftlab.models.arch import Family

EXTENSIONS = "_peftlab_attention"  # attribute of an attention module holding its Extensions
SDPA_BASE = "_peftlab_sdpa_base"  # attribute of an attention module: what computes SDPA under the hook
PREFIX = "peftlab_"
BASES = ("sdpa", "eager")


class AttentionExtension(AdapterModule):
    """Base of the modules ``attach`` puts on attention modules; ``kind`` picks (a), (b) or (c)."""

    kind: ClassVar[str] = ""
    method: str = ""  # name of the method that attached it (for error messages)


class KVExtender(AttentionExtension):
    kind = "kv"

    def extra_kv(self, module: nn.Module, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class AttentionCore(AttentionExtension):
    kind = "core"

    def attend(self, module, query, key, value, attention_mask, *, base, n_extra: int, is_causal: bool, **kwargs):
        raise NotImplementedError


class OutputAdder(AttentionExtension):
    kind = "out"

    def delta(self, module: nn.Module, query: torch.Tensor, scaling: float) -> torch.Tensor:
        raise NotImplementedError


class Extensions(NamedTuple):
    kv: tuple = ()
    core: Optional[AttentionCore] = None
    out: tuple = ()


# ------------------------------------------------------------------------------------------------
# The attention functions
# ------------------------------------------------------------------------------------------------
def _sdpa_base():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


_EAGER: dict[type, object] = {}


def _eager_base(cls: type):
    """The model's own eager function (the fallback its attention passes to ``get_interface``)."""
    fn = _EAGER.get(cls)
    if fn is None:
        fn = getattr(sys.modules[cls.__module__], "eager_attention_forward", None)
        if fn is None:
            raise ModelError(f"attention hook: {cls.__module__} has no eager_attention_forward to fall back to")
        _EAGER[cls] = fn
    return fn


def _make_hook(base_name: str):
    if base_name == "sdpa":
        sdpa = _sdpa_base()

        def peftlab_sdpa(module, query, key, value, attention_mask, **kwargs):
            own = module.__dict__
            base = own.get(SDPA_BASE) or sdpa
            ext = own.get(EXTENSIONS)
            if ext is None:
                return base(module, query, key, value, attention_mask, **kwargs)
            return _extended(ext, base, True, module, query, key, value, attention_mask, kwargs)

        return peftlab_sdpa

    def peftlab_eager(module, query, key, value, attention_mask, **kwargs):
        base = _EAGER.get(type(module)) or _eager_base(type(module))
        ext = module.__dict__.get(EXTENSIONS)
        if ext is None:
            return base(module, query, key, value, attention_mask, **kwargs)
        return _extended(ext, base, False, module, query, key, value, attention_mask, kwargs)

    return peftlab_eager


def _is_causal(module, kwargs) -> bool:
    causal = kwargs.get("is_causal")
    return getattr(module, "is_causal", True) if causal is None else bool(causal)


def _extend_mask(mask, n: int, q: int, kv: int, causal: bool, sdpa: bool, device):
    """The mask over ``n`` extra rows (always visible) followed by ``kv`` keys."""
    if mask is None:
        if not (sdpa and causal and q > 1):
            return None  # no padding, nothing causal to hide: the extra rows need no mask either
        # SDPA's is_causal would align the diagonal to the first (extra) key: materialise it,
        # bottom-right aligned as the mask builders do when a cache makes kv > q.
        rows = torch.arange(q, device=device)[:, None] + (kv - q)
        mask = (torch.arange(kv, device=device)[None, :] <= rows)[None, None]
    return F.pad(mask, (n, 0), value=True if mask.dtype == torch.bool else 0.0)


def _extended(ext: Extensions, base, sdpa: bool, module, query, key, value, mask, kwargs):
    n_extra, gates, plain_query = 0, [], query
    scaling = kwargs.get("scaling")
    if ext.kv:
        batch = key.shape[0]
        ks, vs, gated = [], [], []
        for e in ext.kv:
            k, v, *g = e.extra_kv(module, key)
            if g and g[0].shape[2] == 1:  # one factor per example: scale the rows themselves
                k, v = k * g[0], v * g[0]
            elif g:
                gated.append(len(ks))
                gates.append(g[0])  # (B, 1, q, 1)
            ks.append(k.expand(batch, -1, -1, -1))
            vs.append(v.expand(batch, -1, -1, -1))
        n_extra = sum(k.shape[2] for k in ks)
        kv = key.shape[2]
        if gates:
            if scaling is None:  # the widened head would change SDPA's default 1/√d
                kwargs["scaling"] = query.shape[-1] ** -0.5
            query, key, value = _widen_for_gates(query, ks, vs, key, value, gated, gates)
        else:
            key, value = torch.cat([*ks, key], dim=2), torch.cat([*vs, value], dim=2)
        mask = _extend_mask(mask, n_extra, query.shape[2], kv, _is_causal(module, kwargs), sdpa, key.device)
        bias = kwargs.get("position_bias")
        if bias is not None:
            kwargs["position_bias"] = F.pad(bias, (n_extra, 0))
    if ext.core is not None:
        out, weights = ext.core.attend(module, query, key, value, mask, base=base, n_extra=n_extra,
                                       is_causal=_is_causal(module, kwargs), **kwargs)
    else:
        out, weights = base(module, query, key, value, mask, **kwargs)
    if gates:  # out: (B, q, H, (1 + G) d_v) -> the plain block + each gated block times its gate
        parts = out.chunk(len(gates) + 1, dim=-1)
        out = parts[0] + sum(g.transpose(1, 2).to(out.dtype) * p for g, p in zip(gates, parts[1:]))
    for e in ext.out:
        out = out + e.delta(module, plain_query, plain_query.shape[-1] ** -0.5 if scaling is None else scaling)
    return out, weights


def _widen_for_gates(query, ks, vs, key, value, gated, gates):
    """``q' = [q, g_1 q, …]`` and the rows of block b (0: the plain rows and the input's keys, i: the
    i-th gated extender's) in block b of ``[·, 0, …]``, so ``q'·k'`` is ``g_t q·k`` on gated rows."""
    blocks = len(gates) + 1
    query = torch.cat([query] + [query * g.to(query.dtype) for g in gates], dim=-1)  # (B, H, q, blocks·d)

    def place(t, b):  # (B, H_kv, n, d) into block b of blocks·d zeros
        d = t.shape[-1]
        return F.pad(t, (b * d, (blocks - 1 - b) * d))

    where = {i: j + 1 for j, i in enumerate(gated)}
    key = torch.cat([place(k, where.get(i, 0)) for i, k in enumerate(ks)] + [place(key, 0)], dim=2)
    value = torch.cat([place(v, where.get(i, 0)) for i, v in enumerate(vs)] + [place(value, 0)], dim=2)
    return query, key, value


# ------------------------------------------------------------------------------------------------
# Switching a model to the hook, attaching extensions
# ------------------------------------------------------------------------------------------------
_HOOKS: dict = {}  # base implementation -> its hook function (one per process)


def _register(base_name: str) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = PREFIX + base_name
    hook = _HOOKS.get(base_name)
    if hook is None:
        hook = _HOOKS[base_name] = _make_hook(base_name)
    # registered again whenever the name holds another function: a name taken by anything else
    # would run attention without the methods' extensions, silently
    if ALL_ATTENTION_FUNCTIONS._global_mapping.get(name) is not hook:
        AttentionInterface.register(name, hook)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[base_name])
    return name


def base_implementation(model: nn.Module) -> str:
    """The attention implementation the model uses, or the one the peftlab hook replaced."""
    impl = model.config._attn_implementation or "eager"
    return impl[len(PREFIX):] if impl.startswith(PREFIX) else impl


def use_attention_hook(model: nn.Module) -> str:
    """Switch ``model`` to the peftlab attention function (idempotent); returns its name.

    Keeps the model's SDPA or eager implementation underneath; any other (flash, flex) is replaced
    by SDPA where the model supports it, else eager, since the extensions build SDPA/eager masks.
    """
    impl = model.config._attn_implementation or "eager"
    if impl.startswith(PREFIX):
        return impl
    base = impl if impl in BASES else ("sdpa" if getattr(model, "_supports_sdpa", False) else "eager")
    name = _register(base)
    model.set_attn_implementation(name)
    return name


def use_sdpa_base(model: nn.Module, fn) -> int:
    """Under the hook on SDPA (``peftlab_sdpa``), compute every attention module's SDPA with ``fn``
    (the signature of transformers' ``sdpa_attention_forward``, e.g. the training levers' faster
    one) instead; the extensions run around it as before. Returns how many modules took it (0 for
    a model not on ``peftlab_sdpa``)."""
    if model.config._attn_implementation != PREFIX + "sdpa":
        return 0
    from peftlab.models.arch import family_of

    try:
        family = family_of(model)
    except ModelError:  # a family peftlab has no table for: its attention stays SDPA
        return 0
    modules = attention_modules(model, family, kinds=tuple(family.attention))
    for _, module in modules:
        module.__dict__[SDPA_BASE] = fn
    return len(modules)


def extensions(attention: nn.Module) -> Extensions:
    return attention.__dict__.get(EXTENSIONS) or Extensions()


def attach(model: nn.Module, attention_name: str, slot: str, extension: AttentionExtension) -> None:
    """Register ``extension`` as ``<attention_name>.<slot>`` and in the module's extension table."""
    attention = model.get_submodule(attention_name)
    method = extension.method or slot
    if slot in attention._modules or hasattr(attention, slot):
        raise ModelError(f"{method}: {attention_name} already has a {slot!r} (applied twice?)")
    table = extensions(attention)
    if extension.kind == "core" and table.core is not None:
        raise ModelError(f"{method} and {table.core.method} both replace the attention computation of "
                         f"{attention_name}; only one attention core can be used at a time")
    if extension.kind not in ("kv", "core", "out"):
        raise TypeError(f"{type(extension).__name__} is not a KVExtender, AttentionCore or OutputAdder")
    use_attention_hook(model)
    attention.add_module(slot, extension)
    if extension.kind == "kv":
        table = table._replace(kv=table.kv + (extension,))
    elif extension.kind == "core":
        table = table._replace(core=extension)
    else:
        table = table._replace(out=table.out + (extension,))
    setattr(attention, EXTENSIONS, table)


def attention_modules(model: nn.Module, family: "Family", stacks=None, kinds=("self",)) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every attention module of ``kinds`` ("self", "cross") in
    the blocks of ``stacks`` (None = all), bottom to top per stack, in the family's stack order."""
    out = []
    for stack, i, block in family.blocks(model, stacks):
        path = f"{family.stacks[stack]}.{i}"
        for kind in kinds:
            out += [(f"{path}.{n}", m) for n, m in family.sublayers(block, kind)]
    return out


# ------------------------------------------------------------------------------------------------
# Undo (apply_methods is all or nothing)
# ------------------------------------------------------------------------------------------------
def snapshot(model: nn.Module):
    tables = [(m, m.__dict__.get(EXTENSIONS)) for m in model.modules()]
    config = getattr(model, "config", None)
    return tables, getattr(config, "_attn_implementation", None)


def restore(model: nn.Module, snap) -> None:
    tables, impl = snap
    for m, table in tables:
        if table is None:
            m.__dict__.pop(EXTENSIONS, None)
        else:
            m.__dict__[EXTENSIONS] = table
    if impl is not None and model.config._attn_implementation != impl:
        model.set_attn_implementation(impl)
