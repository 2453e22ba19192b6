"""LoRA's forward and backward as one autograd node (``peftlab.methods.lora`` uses it while its
modules are ``fused``; the composed ``F.linear`` path stays beside it for ``train.fused_kernels: false``)."""

from __future__ import annotations

import torch


class FusedLora(torch.autograd.Function):
    """``y = x W^T + b + s (x_d A^T) B^T`` in one node, for a frozen ``W``, ``b`` (2-D inputs).

    Against composing ``F.linear`` calls it saves the elementwise passes over (N, out): the update
    accumulates into ``y`` (forward) and into ``grad_x`` (backward) in place through ``addmm`` with
    the scale as its ``alpha``. It saves what autograd would (``x_d`` and ``x_d A^T`` for A's and
    B's gradients) and computes no gradient for ``W`` or ``b``. ``xd`` is None when there is no
    dropout (``x_d = x``): then ``x`` gets one gradient, accumulated in place.
    """

    @staticmethod
    def forward(ctx, x, xd, weight, bias, a, b, scaling):
        shared = xd is None
        xd = x if shared else xd
        xa = xd @ a.t()  # (N, r)
        y = x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())  # (N, out)
        y.addmm_(xa, b.t(), alpha=scaling)
        ctx.shared, ctx.scaling = shared, scaling
        ctx.save_for_backward(xd, xa, weight, a, b)
        return y

    @staticmethod
    def backward(ctx, g):
        xd, xa, weight, a, b = ctx.saved_tensors
        gxa = (g @ b).mul_(ctx.scaling)  # (N, r): gradient at x_d A^T
        grad_a = gxa.t() @ xd if ctx.needs_input_grad[4] else None  # (r, in)
        grad_b = (g.t() @ xa).mul_(ctx.scaling) if ctx.needs_input_grad[5] else None  # (out, r)
        grad_x = grad_xd = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ weight  # (N, in)
            if ctx.shared:
                grad_x.addmm_(gxa, a)
        if not ctx.shared and ctx.needs_input_grad[1]:
            grad_xd = gxa @ a
        return grad_x, grad_xd, None, None, grad_a, grad_b, None
