"""Virtual tokens: the input-embedding hook point that prompt tuning and P-tuning share.

A method that adds ``n`` virtual tokens injects a ``VirtualTokens`` module whose ``prompts()``
returns ``P`` (n, d); ``attach`` puts ``P`` in front of the token embeddings ``E(x)`` (B, T, d)::

    T5 (encoder-decoder)   encoder input [P; E(x)] (B, n + T, d). The encoder's attention mask and
                           the decoder's cross-attention mask gain n ones in front; the decoder input,
                           the labels and the logits are unchanged.
    LLaMA (causal)         decoder input [P; E(x)] (B, n + T, d). The attention mask gains n ones,
                           the labels n × -100 (so the loss is over the same targets), position ids
                           ``p`` become [0..n-1, n + p]; the logits come back for the T real tokens
                           only (B, T, V), so code that pairs logits with its own labels still works.

Generation: T5 runs its encoder once (the virtual tokens go in there) and each decoder step widens
the cross-attention mask. A causal model gets the virtual tokens on the first step only (empty KV
cache); later steps find them in the cache, so only the mask is widened and positions shift by n.

Unlike HF peft, nothing wraps the model: hooks on the encoder (T5) or on the model (LLaMA) rewrite
the call's arguments, so ``model(**batch)``, ``generate()``, ``inputs_embeds`` calls and other
methods' hooks keep working. One virtual-token method per model (two would both claim the front
of the input).
"""

from __future__ import annotations

import functools
import inspect
from typing import Optional

import torch

from peftlab.errors import ModelError
from peftlab.methods.base import AdapterModule

ATTR = "virtual_tokens"  # attribute of the host module (T5 encoder / causal LM) holding the module


class VirtualTokens(AdapterModule):
    """Base of modules that prepend ``n`` virtual tokens; subclasses define ``prompts()`` (n, d)."""

    def __init__(self, n: int, method: str):
        super().__init__()
        self.n = n
        self.method = method  # registry name, for error messages
        self.real_len: Optional[int] = None  # causal models: real tokens in the current call

    def prompts(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def eval_prompts(self) -> torch.Tensor:
        """``prompts()`` as inference sees them (no dropout), detached fp32 (n, d): what export and
        folding keep."""
        was_training = self.training
        self.eval()
        try:
            return self.prompts().detach().float().clone()
        finally:
            self.train(was_training)

    def prepend(self, embeds: torch.Tensor) -> torch.Tensor:
        """[P; embeds]: (B, T, d) -> (B, n + T, d); one copy, as any concatenation needs."""
        p = self.prompts().to(device=embeds.device, dtype=embeds.dtype)  # (n, d)
        return torch.cat((p.unsqueeze(0).expand(embeds.shape[0], -1, -1), embeds), dim=1)


def host_of(model, family):
    """The module whose input the virtual tokens join: the encoder (seq2seq) or the model (causal)."""
    return model.get_submodule(family.encoder) if family.kind == "seq2seq" else model


def find(model, family=None) -> Optional[VirtualTokens]:
    """The model's virtual-token module, if a method attached one (never on a model without a family
    table: the methods that attach them need one)."""
    from peftlab.models.arch import table_of

    family = family or table_of(model)
    return getattr(host_of(model, family), ATTR, None) if family is not None else None


def attach(model, family, module: VirtualTokens) -> VirtualTokens:
    """Put ``module`` on the model and register the hooks that insert its tokens."""
    host = host_of(model, family)
    existing = getattr(host, ATTR, None)
    if existing is not None:
        raise ModelError(f"{module.method}: the model already has virtual tokens from {existing.method}; "
                         f"two methods cannot both prepend tokens to one input")
    host.add_module(ATTR, module)
    module.train(host.training)  # a new module starts in training mode; follow the model's (dropout)
    # first among the host's pre-hooks: the others (UniPELT's pools) must see the rewritten call
    if family.kind == "seq2seq":
        host.register_forward_pre_hook(_encoder_pre_hook, with_kwargs=True, prepend=True)
        decoder = model.get_submodule(family.decoder)
        decoder.register_forward_pre_hook(functools.partial(_cross_mask_pre_hook, n=module.n), with_kwargs=True,
                                          prepend=True)
    else:
        host.register_forward_pre_hook(_causal_pre_hook, with_kwargs=True, prepend=True)
        host.register_forward_hook(_causal_post_hook, with_kwargs=True)
    return module


# ------------------------------------------------------------------------------------------------
# Hooks. Each looks its module up on the host at call time (not in a closure), so a deep copy of
# the model runs its own virtual tokens and the model still pickles.
# ------------------------------------------------------------------------------------------------
def _keywords(module, args, kwargs) -> dict:
    if not args:
        return dict(kwargs)
    names = list(inspect.signature(module.forward).parameters)
    return {**dict(zip(names, args)), **kwargs}


def _embeds(host, kwargs) -> Optional[torch.Tensor]:
    """The call's token embeddings (B, T, d), taking ``input_ids`` out of ``kwargs``."""
    if kwargs.get("inputs_embeds") is not None:
        return kwargs["inputs_embeds"]
    ids = kwargs.get("input_ids")
    if ids is None:
        return None  # nothing to embed: let the model raise its own error
    kwargs["input_ids"] = None
    return host.get_input_embeddings()(ids)


def _widen(mask: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """[1 × n, mask] for a 2-D (B, T) attention mask."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise ModelError(f"virtual tokens: got a {mask.dim()}-D attention mask; pass the usual 2-D (batch, length) "
                         f"mask so the virtual tokens can be added to it")
    return torch.cat((mask.new_ones(mask.shape[0], n), mask), dim=1)


def _encoder_pre_hook(encoder, args, kwargs):
    vt = getattr(encoder, ATTR)
    kwargs = _keywords(encoder, args, kwargs)
    embeds = _embeds(encoder, kwargs)
    if embeds is None:
        return (), kwargs
    kwargs["inputs_embeds"] = vt.prepend(embeds)
    kwargs["attention_mask"] = _widen(kwargs.get("attention_mask"), vt.n)
    return (), kwargs


def _cross_mask_pre_hook(decoder, args, kwargs, n: int):
    kwargs = _keywords(decoder, args, kwargs)
    states, mask = kwargs.get("encoder_hidden_states"), kwargs.get("encoder_attention_mask")
    if states is not None and mask is not None and mask.dim() == 2 and states.shape[1] == mask.shape[1] + n:
        kwargs["encoder_attention_mask"] = _widen(mask, n)
    return (), kwargs


def _cache_length(kwargs) -> int:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0


def _causal_pre_hook(model, args, kwargs):
    vt = getattr(model, ATTR)
    n = vt.n
    kwargs = _keywords(model, args, kwargs)
    past = _cache_length(kwargs)
    mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
    if past:  # a later generation step: the virtual tokens are in the KV cache already
        vt.real_len = None
        new = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if mask is not None and new is not None and (mask.dim() != 2 or mask.shape[-1] + n == past + new.shape[1]):
            kwargs["attention_mask"] = _widen(mask, n)  # (a 4-D mask is refused there)
        if pos is not None:
            kwargs["position_ids"] = pos + n
        return (), kwargs
    embeds = _embeds(model, kwargs)
    if embeds is None:
        return (), kwargs
    vt.real_len = embeds.shape[1]
    kwargs["inputs_embeds"] = vt.prepend(embeds)  # (B, n + T, d)
    kwargs["attention_mask"] = _widen(mask, n)
    if pos is not None:  # virtual tokens at 0..n-1, the real ones after them (padding-aware p kept)
        head = torch.arange(n, device=pos.device, dtype=pos.dtype).expand(*pos.shape[:-1], n)
        kwargs["position_ids"] = torch.cat((head, pos + n), dim=-1)
    labels = kwargs.get("labels")
    if labels is not None:
        kwargs["labels"] = torch.cat((labels.new_full((labels.shape[0], n), -100), labels), dim=1)
    return (), kwargs


def _causal_post_hook(model, args, kwargs, output):
    vt = getattr(model, ATTR)
    real, vt.real_len = vt.real_len, None
    if real is None:
        return output
    logits = output.logits if hasattr(output, "logits") else output[1 if kwargs.get("labels") is not None else 0]
    cut = logits.shape[1] - real  # > 0 when the virtual positions were kept (logits_to_keep = 0 or large)
    if cut <= 0:
        return output
    if hasattr(output, "logits"):
        output.logits = logits[:, cut:]
        return output
    i = 1 if kwargs.get("labels") is not None else 0
    return output[:i] + (logits[:, cut:],) + tuple(output[i + 1 :])


def peft_prompt_form(model: torch.nn.Module, family, peft_type: str, extra: dict) -> tuple[dict, dict]:
    """HF peft's prompt-learning form of the model's virtual tokens (``MethodConfig.to_peft``):
    ``prompt_embeddings`` (n, d), P-tuning's encoder already applied (what peft itself saves), in
    front of the encoder (T5) or decoder (causal) input only (``num_transformer_submodules: 1``)."""
    prompts = find(model, family).eval_prompts().cpu().contiguous()  # (n, d)
    config = {"peft_type": peft_type, "num_virtual_tokens": prompts.shape[0], "token_dim": prompts.shape[1],
              "num_transformer_submodules": 1, **extra}
    return config, {"prompt_embeddings": prompts}
