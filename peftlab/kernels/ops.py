"""Cheaper kernels for what the base model computes during training (levers of ``peftlab.train.fast``).

* ``fuse_activations``: T5's ``gelu_new`` (and ``gelu_fast``) are written in transformers as seven
  composed elementwise ops, each a pass over the FFN's (B, T, d_ff) activations forward and more
  backward; ``F.gelu(approximate="tanh")`` is the same function in one kernel (transformers' own
  ``GELUTanh``: "equivalent to NewGELU and FastGELU but much faster", equal up to rounding).

* ``FastDropout``: ``nn.Dropout`` on CPU draws a float per element with ``bernoulli_`` (serial,
  ~6 ns an element here: 10-25% of a T5 LoRA step), then divides and multiplies, and keeps the
  float noise for backward. On CPU float32/bfloat16 tensors, with a C compiler at hand, peftlab's
  own kernel (``peftlab.kernels.native``, ``csrc/dropout.c``) does it in one pass: an element is dropped
  where a 16-bit uniform from a counter-based hash of (seed, index) falls below ``round(p * 2^16)``,
  kept values are scaled by the exact inverse of the kept fraction (unbiased), and backward
  recomputes the mask from the seed — nothing is stored (10x faster than the torch path below on
  T5-small's activations, 2-core EPYC). Elsewhere (GPU, other dtypes, no compiler) one 64-bit draw
  gives four 16-bit uniforms (``keep_mask``: the same rate), backward keeps a bool mask (1 byte an
  element instead of 4), and mask and scale are applied in one ``addcmul`` each way. Either way the
  drop rate is p to within 2^-17, from another random stream than torch's: switchable (``train.fast_dropout``), never
  silently on. Attention-weight dropout happens inside SDPA, which
  on CPU then falls back to its math path anyway: ``use_fast_attention_dropout`` registers that
  path (float32, as SDPA's) with this dropout as a transformers attention function.
  Under ``torch.compile`` both step aside for torch's own dropout: dynamo cannot trace ``random_``
  (a graph break at every dropout), and inductor generates and fuses its masks itself.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.kernels import native
from peftlab.kernels import causal_blocks

_LEVELS = 1 << 16  # 16-bit uniforms


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A bool mask (True = kept) with P(dropped) = round(p * 2^16) / 2^16, and the scale of kept values."""
    n = 1
    for s in shape:
        n *= s
    cut = drop_cut(p)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)  # full 64 bits
    uniforms = words.view(torch.int16)[:n].view(shape)  # in [-2^15, 2^15)
    return uniforms >= cut - (_LEVELS >> 1), drop_mask_scale(p)


def drop_cut(p: float) -> int:
    """The 16-bit threshold of rate ``p``: an element is dropped where its uniform is below it."""
    return round(p * _LEVELS)


def drop_mask_scale(p: float) -> float:
    """The scale ``keep_mask`` gives kept values for rate ``p``: the inverse of the kept fraction."""
    return _LEVELS / (_LEVELS - drop_cut(p))


def _apply_mask(x: torch.Tensor, kept: torch.Tensor, scale: float) -> torch.Tensor:
    """``x * scale`` where ``kept``, 0 elsewhere, in one pass: ``addcmul`` of a 0-dim zero, ``x`` and
    the bool mask (cast inside the kernel), the same values as ``(x * scale).masked_fill_(~kept, 0)``
    (tested bit for bit in float32 and bfloat16; an infinite dropped value gives NaN there, not 0).
    ``where`` and then the scale in place took 1.6-1.8x as long on T5-small's activation shapes on
    the 2-core EPYC (float32; 1.1-1.4x in bfloat16): ``where`` with a bool condition is not
    vectorised there, a multiply by a bool tensor is."""
    if scale == 1.0:
        return torch.mul(x, kept)
    return torch.addcmul(x.new_zeros(()), x, kept, value=scale)


class _Dropout(torch.autograd.Function):
    """The dropout; ``unscaled``: only the zeros, the caller applies the scale (``drop_mask_scale``)
    where it is cheaper (after a matmul that shrinks the tensor). On CPU float32/bfloat16 tensors
    with peftlab's C kernel built (``peftlab.kernels.native``): one pass, the mask a hash of a seed,
    recomputed in backward, never stored; otherwise ``keep_mask`` and one ``addcmul`` each way."""

    @staticmethod
    def forward(ctx, x, p: float, unscaled: bool = False):
        scale = 1.0 if unscaled else drop_mask_scale(p)
        ctx.scale = scale
        if native.handles(x):
            ctx.seed, ctx.cut = native.draw_seed(), drop_cut(p)
            return native.dropout(x, ctx.seed, ctx.cut, scale)
        ctx.seed = None
        kept, _ = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(kept)
        return _apply_mask(x, kept, scale)

    @staticmethod
    def backward(ctx, g):
        if ctx.seed is not None:  # the same hash, the same seed: the forward's mask
            if native.handles(g):
                return native.dropout(g, ctx.seed, ctx.cut, ctx.scale), None, None
            return native.dropout(g.float(), ctx.seed, ctx.cut, ctx.scale).to(g.dtype), None, None
        (kept,) = ctx.saved_tensors
        return _apply_mask(g, kept, ctx.scale), None, None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the cheaper mask above (an ``nn.Dropout``, so code that checks keeps working)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        if torch.compiler.is_compiling():  # dynamo cannot trace random_; inductor fuses its own dropout
            return nn.functional.dropout(x, self.p, True)
        return _Dropout.apply(x, self.p)


# transformers' SDPA, with FastDropout on the attention weights in training (ATTENTION), with causal
# blocks on CPU (BLOCKS, ``peftlab.kernels.causal_blocks``), or both. Not under the attention hook's
# "peftlab_" prefix: that name would shadow (or be shadowed by) the hook that methods attach to.
ATTENTION = "fastdrop_sdpa"
BLOCKS = "blocks_sdpa"
BLOCKS_AND_DROPOUT = "blocks_fastdrop_sdpa"


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
               position_bias=None, *, drop: bool = True, blocks: bool = False, **kwargs):
    """transformers' ``sdpa_attention_forward``, except in training (``drop``) with dropout: there SDPA
    itself falls back to its math path on CPU (scores, softmax, ``bernoulli_`` dropout, matmul);
    this is that path, in float32 as SDPA's own, with ``FastDropout``'s mask; and (``blocks``) where
    ``causal_blocks.takes`` a causal call, that computes it by blocks of queries."""
    from transformers.integrations.sdpa_attention import create_position_bias_mask, repeat_kv, sdpa_attention_forward

    special = kwargs.get("softcap") is not None or kwargs.get("output_attentions") or torch.compiler.is_compiling()
    dropping = drop and module.training and dropout > 0 and not special
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = q_len > 1 and attention_mask is None and (
        is_causal if is_causal is not None else getattr(module, "is_causal", True))
    take_blocks = (blocks and not dropping and not special and position_bias is None
                   and causal_blocks.takes(query, key, attention_mask, dropout, causal, training=module.training))
    if not (dropping or take_blocks):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, position_bias=position_bias, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if take_blocks:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = causal_blocks.block_causal_attention(query, key, value, attention_mask, scale)
        return out.transpose(1, 2).contiguous(), None
    mask = attention_mask
    if causal and kv_len > q_len:  # as sdpa_attention_forward: is_causal aligns top-left
        key, value = key[:, :, :q_len], value[:, :, :q_len]
        position_bias = position_bias[..., :q_len] if position_bias is not None else None
    if position_bias is not None:
        mask, causal = create_position_bias_mask(position_bias, attention_mask, causal, query, key), False
    out = math_attention(query, key, value, mask, causal, scaling, dropout)  # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), None


def math_attention(query, key, value, mask, causal: bool, scaling, dropout: float) -> torch.Tensor:
    """softmax(q k^T s + mask) v in float32 (SDPA's math path upcasts bf16/fp16 too), dropout on the weights.

    Passes over the (B, H, Tq, Tk) scores are what cost here: none for s = 1 (T5 does not scale),
    the mask added in place, and dropout's 1/(1-p) applied to the (B, H, Tq, D) output instead."""
    dtype, device = query.dtype, query.device.type
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    with torch.autocast(device, enabled=False):
        q, k, v = query.float(), key.float(), value.float()
        scores = q @ k.transpose(-2, -1)  # (B, H, Tq, Tk); matmul's backward needs q and k, not this
        if scale != 1.0:
            scores.mul_(scale)
        low = torch.finfo(torch.float32).min
        if mask is not None:
            scores = scores.masked_fill_(~mask, low) if mask.dtype == torch.bool else scores.add_(mask)
        if causal:  # top-left aligned, as SDPA's is_causal
            tq, tk = scores.shape[-2:]
            scores = scores.masked_fill_(torch.ones(tq, tk, dtype=torch.bool, device=q.device).triu(1), low)
        probs = torch.softmax(scores, dim=-1)
        if dropout <= 0:
            return (probs @ v).to(dtype)
        out = _Dropout.apply(probs, dropout, True) @ v
        return out.mul_(drop_mask_scale(dropout)).to(dtype)


def use_fast_attention_dropout(model: nn.Module) -> bool:
    """``use_fast_attention(model, drop=True)``: FastDropout on the attention weights only."""
    return use_fast_attention(model, drop=True)


def use_fast_attention(model: nn.Module, drop: bool = False, blocks: bool = False) -> bool:
    """Route the model's attention through ``_attention`` (``drop``: FastDropout on its weights in
    training; ``blocks``: causal blocks on CPU) when it runs transformers' stock SDPA, or peftlab's
    attention hook on SDPA (the methods' extensions then run around it); True when switched."""
    if not (drop or blocks):
        return False
    import functools

    from peftlab.methods.hooks.attention import use_sdpa_base

    fn = functools.partial(_attention, drop=drop, blocks=blocks)
    if use_sdpa_base(model, fn):  # peftlab's hook on SDPA: the methods' extensions run around fn
        return True
    if getattr(model.config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    name = BLOCKS_AND_DROPOUT if drop and blocks else BLOCKS if blocks else ATTENTION
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)  # masks exactly as for "sdpa"
    model.set_attn_implementation(name)
    return model.config._attn_implementation == name


def _replace_children(model: nn.Module, make) -> int:
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = make(child)
            if new is not None:
                setattr(parent, name, new)
                n += 1
    return n


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every ``nn.Dropout`` with p > 0 for a ``FastDropout``; returns how many were swapped."""
    return _replace_children(
        model, lambda m: FastDropout(m.p) if type(m) is nn.Dropout and m.p > 0 else None)


class TanhGELU(nn.Module):
    """GELU, tanh approximation, one kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="tanh")


def fuse_activations(model: nn.Module) -> int:
    """Swap transformers' composed tanh-GELUs for ``TanhGELU``; returns how many were swapped."""
    try:
        from transformers.activations import FastGELUActivation, NewGELUActivation
    except ImportError:  # pragma: no cover - transformers always has them
        return 0
    composed = (NewGELUActivation, FastGELUActivation)
    return _replace_children(model, lambda m: TanhGELU() if type(m) in composed else None)


# ------------------------------------------------------------------------------------- RMSNorm

# The RMSNorms of the supported families, by class name -> how the normalised value is rounded
# before the weight multiplies it: "t5" to the weight's dtype when that is 16-bit (T5LayerNorm),
# "llama" back to the input's dtype (LlamaRMSNorm and its copies).
RMS_NORMS = {"T5LayerNorm": "t5", "MT5LayerNorm": "t5", "LlamaRMSNorm": "llama", "MistralRMSNorm": "llama",
             "Qwen2RMSNorm": "llama", "Qwen3RMSNorm": "llama"}


class _RMSNorm(torch.autograd.Function):
    """y = w ⊙ x · r,  r = (mean(x²) + ε)^-½, in float32 (as transformers' norms), in 3 passes over x
    forward (transformers: 6 kernels) and 5 backward (autograd through the composed ops: ~9):

        ∂L/∂x = r · (g_w − x̂ · mean(g_w ⊙ x̂)),  g_w = w ⊙ g,  x̂ = x · r;   ∂L/∂w = Σ g ⊙ x̂ (when w trains)

    The rounding of x̂ (``rounded_to``) is a cast: straight-through in backward, as autograd's."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, rounded_to):
        xf = x.float()
        rstd = torch.linalg.vector_norm(xf, 2, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x, rstd, weight)
        ctx.rounded_to = rounded_to
        xhat = xf * rstd
        if rounded_to is not None and rounded_to != torch.float32:
            return weight * xhat.to(rounded_to)
        return xhat.mul_(weight)  # float32 either way (a 16-bit weight promotes); xhat is not kept

    @staticmethod
    def backward(ctx, g):
        x, rstd, weight = ctx.saved_tensors
        xf = x.float()
        grad_x = grad_w = None
        gw = (g * weight).float()
        if ctx.needs_input_grad[0]:
            dot = (gw * xf).mean(-1, keepdim=True).mul_(rstd.square())  # mean(g_w ⊙ x̂) / r
            grad_x = torch.addcmul(gw * rstd, xf, dot * rstd, value=-1).to(x.dtype)
        if ctx.needs_input_grad[1]:
            xhat = xf * rstd
            if ctx.rounded_to is not None:
                xhat = xhat.to(ctx.rounded_to)
            grad_w = (g * xhat).reshape(-1, weight.shape[-1]).sum(0).to(weight.dtype)
        return grad_x, grad_w, None, None


def _rms_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if self._rms_style == "llama":
        rounded_to = hidden_states.dtype
    else:
        rounded_to = self.weight.dtype if self.weight.dtype in (torch.float16, torch.bfloat16) else None
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon, rounded_to)


_FUSED_NORM_CLASSES: dict[type, type] = {}


def _fused_norm_class(cls: type) -> type:
    """``cls`` with ``_RMSNorm`` as its forward (a subclass: isinstance checks, parameter names and
    the state dict stay those of transformers' norm)."""
    if cls not in _FUSED_NORM_CLASSES:
        _FUSED_NORM_CLASSES[cls] = type(f"Fused{cls.__name__}", (cls,), {
            "forward": _rms_forward, "_rms_style": RMS_NORMS[cls.__name__], "__module__": __name__})
    return _FUSED_NORM_CLASSES[cls]


def fuse_rms_norms(model: nn.Module) -> int:
    """Give each of the model's transformers RMSNorms (``RMS_NORMS``) the one-pass forward and
    backward of ``_RMSNorm``; returns how many were switched."""
    n = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__ in RMS_NORMS and hasattr(module, "variance_epsilon") and isinstance(
                getattr(module, "weight", None), torch.Tensor):
            module.__class__ = _fused_norm_class(cls)
            n += 1
    return n
