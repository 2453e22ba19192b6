"""The training step's speed levers, each a ``TrainSpec`` field, each tested to train the same
weights as the plain path (``tests/kernels/test_levers.py``).

``training_loss(model, spec)`` applies them and returns the function the loop calls per
micro-batch; the speed benchmark (``peftlab speed``) times exactly this function against HF peft.

* ``fused_kernels``: one kernel where transformers or a method composes several: LoRA's update
  (``peftlab.kernels.lora.FusedLora``), T5's tanh-GELU and the RMSNorms of T5 and LLaMA (one
  reduction and one explicit backward instead of autograd through six ops; ``peftlab.kernels.ops``),
  a gated FFN's activation, product and dropout on CPU (``peftlab.kernels.gated``),
  and on CPU causal self-attention by blocks of queries (``peftlab.kernels.causal_blocks``: the keys
  past each block are never multiplied; SDPA's flash kernel runs at half the matmul rate there).
* ``fast_dropout``: the model's dropout with a cheaper random mask (``peftlab.kernels.ops``):
  the same distribution, another random stream, so it is off unless asked for.
* ``cast_frozen``: under bf16/fp16 autocast every ``F.linear`` computes with its weight cast to the
  autocast dtype, and autocast casts frozen weights again on every call (it caches only tensors
  that require grad) and keeps the copies alive for backward. Storing the frozen linear weights in
  that dtype gives bit-identical results with half their memory and none of the casts. Weights
  shared with a non-linear module (T5's tied embedding) are left alone: an embedding's output
  is not autocast.
* ``loss_chunk``: the output layer and cross-entropy by chunks of rows, positions labelled -100
  skipped (``peftlab.kernels.head_loss``); ``auto``, the default, wherever the output layer is a plain
  bias-free linear layer (decoders and encoder-decoders).
* ``compile``: ``torch.compile`` of the model (inductor on CPU and GPU); the first steps compile.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from peftlab.kernels.head_loss import head_loss_fn, resolve_loss_chunk

COMPILE_BACKEND = "inductor"  # the tests swap in "aot_eager" (same tracing, no C++ compile)
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def forward_levers(model: nn.Module, spec) -> None:
    """The levers that change how ``model`` computes its forward pass (fused kernels, fast dropout and
    attention), as training applies them. A run scores its test split on the model it trained, with
    these on; a finished run reloaded to be scored again gets them too (``peftlab.lab.run.load_trained``),
    or beam search could break a near-tie the other way (their results agree to ~1e-7, not bitwise)."""
    from peftlab.methods.base import AdapterModule

    from peftlab.kernels import gated, ops as kernels

    for module in model.modules():
        if isinstance(module, AdapterModule):
            module.fused = spec.fused_kernels
    if spec.fused_kernels:
        kernels.fuse_activations(model)
        kernels.fuse_rms_norms(model)
        gated.fuse_gated_ffns(model)
    if spec.fast_dropout:
        kernels.use_fast_dropout(model)
    kernels.use_fast_attention(getattr(model, "module", model), drop=spec.fast_dropout, blocks=spec.fused_kernels)


def training_loss(model: nn.Module, spec) -> Callable[[dict], torch.Tensor]:
    """``loss_of(batch)`` for ``model`` trained under ``spec`` (call it inside autocast), its
    ``mixed_precision`` resolved ("bf16", "fp16" or "no", not "auto")."""
    forward_levers(model, spec)
    if spec.cast_frozen and spec.mixed_precision in _AUTOCAST_DTYPES:
        cast_frozen_linears(model, _AUTOCAST_DTYPES[spec.mixed_precision])
    forward = torch.compile(model, backend=COMPILE_BACKEND) if spec.compile else model
    inner = getattr(model, "module", model)  # DDP wraps the model
    chunk = resolve_loss_chunk(inner, spec.loss_chunk, spec.mixed_precision)
    if chunk:
        head_loss = head_loss_fn(inner, chunk)
        return lambda batch: head_loss(forward, batch)

    def loss_of(batch: dict) -> torch.Tensor:
        return forward(**batch).loss

    return loss_of


def _linear_modules(model: nn.Module) -> list[nn.Module]:
    """Modules whose ``weight``/``bias`` only ever reach ``F.linear`` (plain and LoRA-wrapped)."""
    from peftlab.methods.lora import LoraLinear

    return [m for m in model.modules() if type(m) is nn.Linear or (isinstance(m, LoraLinear) and m.base_layer is None)]


@torch.no_grad()
def cast_frozen_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen float32 weights and biases of linear layers in ``dtype``; returns how many
    tensors were cast. Parameters that any other module also holds are kept as they are."""
    linears = _linear_modules(model)
    linear_ids = {id(m) for m in linears}
    shared = {id(p) for m in model.modules() if id(m) not in linear_ids for p in m.parameters(recurse=False)}
    cast = 0
    for m in linears:
        for p in (m.weight, m.bias):
            if p is None or p.requires_grad or p.dtype != torch.float32 or id(p) in shared:
                continue
            if type(p.data) is not torch.Tensor:  # sharded (DTensor) or quantized storage: not ours to recast
                continue
            p.data = p.data.to(dtype)
            cast += 1
    return cast
