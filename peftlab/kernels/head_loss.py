"""Cross-entropy through the output layer in chunks of rows, never the full-vocabulary logits.

A language model's loss is ``CE(h W^T, y)`` over N label positions, h: (N, d), W: (V, d). The
model's own path materialises the (N, V) logits, a float32 copy of them, the log-softmax and its
gradient: four (N, V) tensors, the largest activations of a small model with a 32k vocabulary.
Here ``_ChunkedHeadLoss`` walks the rows ``chunk`` at a time and, while the chunk's logits exist,
computes its loss and the gradient with respect to h (and W, when W trains):

    p = softmax(h_c W^T)               (c, V)  float32 arithmetic, one chunk at a time
    dL/dh_c = (p - onehot(y_c)) W / n  (c, d)
    dL/dW  += (p - onehot(y_c))^T h_c / n

so only (c, V) ever exists, and rows whose label is ignored (-100: padding) are never computed.
On CPU (float32 or bfloat16 logits) one C kernel (``peftlab.kernels.native.cross_entropy_``) turns a
chunk's logits into its losses and, in place, p - onehot(y): one read and one write of the chunk
instead of torch's five passes (upcast, log-softmax, exp, the label's -1, autocast's cast back).
Under autocast the matmuls run in the autocast dtype and the softmax in float32, as the model's
own loss does (its logits come out of an autocast ``F.linear``; cross-entropy upcasts them).

The model still runs its own forward: a pre-hook on the output layer captures its input and hands
it an empty slice, so the layer costs nothing and every method that hooks into the model works.

``train.loss_chunk: auto`` (the default) takes this path wherever the output layer allows it. It pays
most on decoders: their labels mask the prompt (-100), so the model's own loss computes the logits
of every prompt position for nothing, and a small model's output layer is a large share of its
FLOPs (mini-llama: 2.1M of 8.4M weights). An encoder-decoder labels only its target, so there is
little to skip, but the one read and write of the logits replaces torch's passes and the (N, V)
zeros of its backward: less peak memory (docs/speed.md has what was measured).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from peftlab.kernels import native

IGNORE = -100
AUTO_CHUNK = 1024  # label positions per chunk under loss_chunk: auto ((1024, V) float32: 32 MiB at V = 8192)
# config fields of families whose logits are not the output layer's plain product (soft-capped,
# scaled): the chunked loss would compute another function, so ``auto`` leaves them their own loss
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int, n: int):
        w = weight
        grad_h = torch.empty_like(hidden)  # (N, d)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = torch.arange(min(chunk, hidden.shape[0]), device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start : start + chunk], labels[start : start + chunk]  # (c, d), (c,)
            logits = h @ w.t()  # (c, V); autocast picks the matmul's dtype
            if native.handles_cross_entropy(logits):
                total += native.cross_entropy_(logits, y).sum()  # logits become softmax - onehot
                p = logits
            else:
                r = rows[: h.shape[0]]
                logp = torch.log_softmax(logits.float(), dim=-1)
                total -= logp[r, y].sum()
                p = logp.exp_()  # softmax, in place
                p[r, y] -= 1.0  # dL/dlogits * n
            grad_h[start : start + chunk] = (p @ w).div_(n)  # (c, d): 1/n on the small side
            if grad_w is not None:
                grad_w.add_((p.t() @ h.float()).div_(n))
        ctx.save_for_backward(grad_h, grad_w)
        return total / n

    @staticmethod
    def backward(ctx, g):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * g, (grad_w * g if grad_w is not None else None), None, None, None


def chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels`` (ignored: -100), by chunks."""
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    keep = (labels != IGNORE).nonzero().squeeze(1)
    if keep.numel() == 0:  # nothing to predict: a zero that still reaches the graph
        return hidden.sum() * 0.0
    if keep.numel() < labels.numel():
        hidden, labels = hidden.index_select(0, keep), labels.index_select(0, keep)
    return _ChunkedHeadLoss.apply(hidden, weight, labels, chunk, keep.numel())


class HeadCapture:
    """A pre-hook on the output layer: while ``active``, it keeps the layer's input as ``hidden``
    and gives the layer an empty slice of it (logits of zero positions)."""

    def __init__(self, head: nn.Module):
        self.active, self.hidden = False, None
        self.handle = head.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        if not self.active:
            return None
        self.hidden = args[0]
        return (args[0][..., :0, :],) + tuple(args[1:])


def resolve_loss_chunk(model: nn.Module, setting, precision: str = "no") -> Optional[int]:
    """``train.loss_chunk`` for ``model`` (unwrapped) trained under autocast ``precision``: a number
    or None as given; ``auto``: ``AUTO_CHUNK`` on a model whose logits are its output layer's
    plain product, that layer an unsharded, unhooked, bias-free ``nn.Linear`` (LLaMA-Adapter v2's
    bias and scale on it keep the model's loss) whose weight the hidden states can meet (float32,
    or any dtype under autocast); otherwise None, the model's own loss. ``head_loss_fn`` refuses
    an explicit number where the layer cannot take it; ``auto`` never gets that far."""
    if setting != "auto":
        return setting
    config = model.config
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear or head.bias is not None or type(head.weight.data) is not torch.Tensor:
        return None  # a method's wrapper (LLaMA-Adapter v2's), a bias, a sharded (FSDP) or quantized weight
    if head._forward_hooks or head._forward_pre_hooks:
        return None  # something acts on its output the chunks would never produce
    if head.weight.dtype != torch.float32 and precision not in ("bf16", "fp16"):
        return None
    return AUTO_CHUNK


def head_loss_fn(model: nn.Module, chunk: int):
    """``loss_of(forward, batch)``: the model's forward without its output layer, then the chunked
    loss on the captured hidden states, shifted for a causal LM as HF's own loss shifts them."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise ValueError("train.loss_chunk needs an output layer that is a bias-free nn.Linear")
    capture = HeadCapture(head)
    encoder_decoder = bool(model.config.is_encoder_decoder)
    virtual = 0 if encoder_decoder else _virtual_tokens(model)  # positions a method prepends (decoders)

    def loss_of(forward, batch: dict) -> torch.Tensor:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if encoder_decoder and "decoder_input_ids" not in inputs:
            inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
        capture.active = True
        try:
            forward(**inputs)
        finally:
            capture.active = False
        hidden, capture.hidden = capture.hidden, None
        if not encoder_decoder:
            extra = hidden.shape[1] - labels.shape[1]
            if extra > 0 and extra == virtual:  # prompt tuning / P-tuning prepend n positions:
                labels = torch.nn.functional.pad(labels, (extra, 0), value=IGNORE)  # labelled as their hook does
            labels = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)  # position t predicts token t+1
        if hidden.shape[:-1] != labels.shape:
            raise ValueError(f"train.loss_chunk: the model's hidden states {tuple(hidden.shape[:-1])} do not line "
                             f"up with the labels {tuple(labels.shape)} (a method that adds positions?)")
        return chunked_head_loss(hidden, head.weight, labels, chunk)

    return loss_of


def _virtual_tokens(model: nn.Module) -> int:
    """How many virtual tokens a method prepends to the model's input (0: none)."""
    from peftlab.methods.hooks import virtual_tokens

    found = virtual_tokens.find(model)
    return found.n if found is not None else 0
