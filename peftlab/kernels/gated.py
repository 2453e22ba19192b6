"""A gated FFN's activation in one kernel each way (a lever of ``train.fused_kernels``).

T5's gated-GELU FFN and LLaMA's SwiGLU compute

    h = act(x W_gate^T) ⊙ (x W_up^T),   y = W_down dropout(h)

with act the tanh-GELU (T5) or SiLU (LLaMA). transformers composes the activation, the product and
the dropout from separate ops: three passes over the (B, T, d_ff) activations forward, about five
backward (the activation's own backward, two products, the dropout's), and autograd keeps act(a),
b, a and the dropout's float noise for it. On CPU (float32 or bfloat16, peftlab's kernels built:
``peftlab.kernels.native.gated``) ``_GatedProduct`` reads a and b once and writes h once, and backward
reads the gradient, a and b once and writes both gradients once, recomputing act(a):

    ∂L/∂a = g' ⊙ b ⊙ act'(a),   ∂L/∂b = g' ⊙ act(a),   g' = g ⊙ m / (1 - p)

When the FFN's dropout is peftlab's ``FastDropout`` (``train.fast_dropout``), its mask m (the same
hash as the dropout kernel's) is applied inside the kernel; torch's own ``nn.Dropout`` runs after
it unchanged, so its random stream is untouched. Elsewhere (GPU, other dtypes, under
``torch.compile``, no compiler) the FFN computes as transformers wrote it.

The FFN modules are switched by class (``GATED_FFNS``, as ``peftlab.kernels.ops`` switches the
RMSNorms): a subclass with this forward, so parameter names, hooks on the projections (LoRA, IA3)
and the state dict are transformers'.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.kernels import native
from peftlab.kernels.ops import FastDropout, drop_cut, drop_mask_scale

# FFN class name -> (gate, up, down, activation, dropout) attribute names (dropout None: the FFN has
# none) and whether its forward casts h to the down projection's weight dtype (T5 keeps wo in float32
# for 8-bit loading, transformers issue 20287)
GATED_FFNS = {
    "T5DenseGatedActDense": ("wi_0", "wi_1", "wo", "act", "dropout", True),
    "MT5DenseGatedActDense": ("wi_0", "wi_1", "wo", "act", "dropout", True),
    "LlamaMLP": ("gate_proj", "up_proj", "down_proj", "act_fn", None, False),
    "MistralMLP": ("gate_proj", "up_proj", "down_proj", "act_fn", None, False),
    "Qwen2MLP": ("gate_proj", "up_proj", "down_proj", "act_fn", None, False),
    "Qwen3MLP": ("gate_proj", "up_proj", "down_proj", "act_fn", None, False),
}
# activation class name -> the kernel's activation (``native.GATED_ACTIVATIONS``); others keep transformers' path
ACTIVATIONS = {
    "SiLU": "silu", "SiLUActivation": "silu",
    "NewGELUActivation": "gelu_tanh", "FastGELUActivation": "gelu_tanh", "GELUTanh": "gelu_tanh",
    "PytorchGELUTanh": "gelu_tanh", "TanhGELU": "gelu_tanh",
}


class _GatedProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, act: str, p: float):
        seed, cut, scale = (native.draw_seed(), drop_cut(p), drop_mask_scale(p)) if p > 0 else (0, 0, 1.0)
        ctx.act, ctx.seed, ctx.cut, ctx.scale = act, seed, cut, scale
        ctx.save_for_backward(a, b)
        return native.gated(a, b, act, seed, cut, scale)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        da, db = native.gated_backward(g, a, b, ctx.act, ctx.seed, ctx.cut, ctx.scale)
        return da, db, None, None


def gated_product(a: torch.Tensor, b: torch.Tensor, act: str, p: float = 0.0) -> torch.Tensor:
    """``act(a) * b``, then dropped at rate ``p`` with ``FastDropout``'s mask; CPU float32/bfloat16
    tensors of one shape and dtype (``native.handles_gated``)."""
    return _GatedProduct.apply(a, b, act, p)


def _hooked(module) -> bool:
    return module is not None and bool(module._forward_hooks or module._forward_pre_hooks)


def _gated_forward(self, x: torch.Tensor) -> torch.Tensor:
    gate, up, down, act_name, drop_name, cast_down = self._gated_names
    act_module = getattr(self, act_name)
    drop = getattr(self, drop_name) if drop_name else None
    act = ACTIVATIONS.get(type(act_module).__name__)
    if act is None or torch.compiler.is_compiling() or _hooked(act_module) or _hooked(drop):
        return self._gated_base.forward(self, x)  # something watches a module the kernel would skip
    a, b = getattr(self, gate)(x), getattr(self, up)(x)
    p = drop.p if drop is not None and drop.training else 0.0
    if not native.handles_gated(a, b):  # GPU, another dtype: transformers' ops on the projections already made
        h = act_module(a) * b
        h = drop(h) if drop is not None else h
    elif p >= 1.0:
        h = torch.zeros_like(a)
    elif p == 0.0 or type(drop) is FastDropout:
        h = gated_product(a, b, act, p)
    else:  # torch's dropout: its own random stream, after the fused product
        h = drop(gated_product(a, b, act))
    out_layer = getattr(self, down)
    weight = getattr(out_layer, "weight", None)
    if cast_down and isinstance(weight, torch.Tensor) and h.dtype != weight.dtype and weight.dtype != torch.int8:
        h = h.to(weight.dtype)
    return out_layer(h)


_FUSED_FFN_CLASSES: dict[type, type] = {}


def _fused_ffn_class(cls: type) -> type:
    if cls not in _FUSED_FFN_CLASSES:
        _FUSED_FFN_CLASSES[cls] = type(f"Fused{cls.__name__}", (cls,), {
            "forward": _gated_forward, "_gated_base": cls, "_gated_names": GATED_FFNS[cls.__name__],
            "__module__": __name__})
    return _FUSED_FFN_CLASSES[cls]


def fuse_gated_ffns(model: nn.Module) -> int:
    """Give each of the model's gated FFNs (``GATED_FFNS``) the fused forward; returns how many were switched."""
    n = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__ in GATED_FFNS and all(hasattr(module, name) for name in GATED_FFNS[cls.__name__][:4]):
            module.__class__ = _fused_ffn_class(cls)
            n += 1
    return n
