"""Building what a speed case times: one base model, and on it peftlab's method, HF peft's, or the
plain model trained in full, with the same weights everywhere.

The implementations of a PEFT case share the frozen base weights' storage (each has its own
``Parameter`` objects over it), so a 7B-shaped comparison holds the base once; full fine-tuning
gets its own copy. After building, peftlab's adapter weights are copied into peft's where the two
name them alike (``PEFT_NAMES``), B of LoRA made nonzero first, so both compute the same function
and the benchmark checks that they do (``init_loss``).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from peftlab.errors import ConfigError, ModelError
from peftlab.lab.speed.spec import BatchShape, CaseSpec, ModelShape

# the end of a peftlab adapter tensor's name -> the end of peft's name for it, per method; add a row
# per method that peft also has, and the benchmark starts both from the same weights.
PEFT_NAMES = {
    ".lora_a": ".lora_A.default.weight",
    ".lora_b": ".lora_B.default.weight",
    ".ia3_l": ".ia3_l.default",  # peft stores (d, 1) or (1, d); same values
    ".adaption_prompt.prompt": ".adaption_prompt",  # peft: (1, K, d)
    ".adaption_prompt.gate": ".adaption_gate",  # peft: one gate per layer, peftlab one per head
}
# peftlab's prompt-side tensors (wherever the model keeps them) -> peft's prompt encoder: prompt
# tuning's soft prompt, P-tuning's encoder (peft's MLP layout), prefix tuning's reparametrisation
_ENCODER = "prompt_encoder.default"
_PEFT_WHOLE_NAMES = {
    "virtual_tokens.prompt": f"{_ENCODER}.embedding.weight",
    "virtual_tokens.embedding": f"{_ENCODER}.embedding.weight",
    **{f"virtual_tokens.mlp.{i}.{w}": f"{_ENCODER}.mlp_head.{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")},
    "prefix_mlp.embedding": f"{_ENCODER}.embedding.weight",
    **{f"prefix_mlp.mlp.{i}.{w}": f"{_ENCODER}.transform.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")},
}
_PEFT_PREFIX = "base_model.model."
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    return _AUTOCAST[precision]


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for, but torch sees no CUDA device (use --dry-run to check the spec)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Base:
    model: nn.Module
    tokenizer: Any  # None for a model built from config
    family: Any


def build_base(shape: ModelShape, device: torch.device) -> Base:
    """The base model on ``device`` (``meta``: shapes only, nothing allocated)."""
    import transformers

    from peftlab.models.arch import family_of, get_family

    dtype = getattr(torch, shape.dtype)
    if shape.name is not None and device.type != "meta":
        from peftlab.models.loading import load_model
        from peftlab.schema import ModelSpec

        loaded = load_model(ModelSpec(name=shape.name, config=dict(shape.config), dtype=shape.dtype), seed=shape.seed)
        return Base(loaded.model.to(device), loaded.tokenizer, loaded.family)
    if shape.name is not None:  # meta: the loaded model's config, no weights
        from peftlab.models.loading import resolve_model_name

        config = transformers.AutoConfig.from_pretrained(resolve_model_name(shape.name))
        config.update(dict(shape.config))
        family = family_of(config)
    else:
        family = get_family(shape.family)
        try:
            config = transformers.AutoConfig.for_model(family.model_types[0], **shape.config)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.config: {e}") from None
    auto = transformers.AutoModelForSeq2SeqLM if family.kind == "seq2seq" else transformers.AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(shape.seed)
        model = auto.from_config(config, dtype=dtype)
    return Base(model, None, family)


def twin(base: nn.Module, share_frozen: bool) -> nn.Module:
    """A copy of ``base``; with ``share_frozen`` its weights are new Parameters over the same storage."""
    if not share_frozen:
        return copy.deepcopy(base)
    memo = {}
    for t in itertools.chain(base.parameters(), base.buffers()):
        memo[id(t)] = nn.Parameter(t.data, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else t
    return copy.deepcopy(base, memo)


def make_batch(batch: BatchShape, config, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens (ids >= 2: no pad, no EOS), all attended; labels are the targets (seq2seq) or
    the inputs themselves (decoder, shifted inside the model), a decoder's ``source`` prompt tokens
    labelled -100 when it has ``target`` answer tokens after them."""
    g = torch.Generator().manual_seed(seed)
    vocab = config.vocab_size
    decoder_only = not config.is_encoder_decoder
    ids = torch.randint(2, vocab, (batch.size, batch.source + (batch.target if decoder_only else 0)), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if not decoder_only:
        if not batch.target:
            raise ConfigError("batch.target: an encoder-decoder model needs target tokens (batch.target > 0)")
        out["labels"] = torch.randint(2, vocab, (batch.size, batch.target), generator=g)
    else:
        out["labels"] = ids.clone()
        if batch.target:
            out["labels"][:, : batch.source] = -100  # the prompt: context, not predicted
    if batch.tasks:
        out["task_ids"] = torch.arange(batch.size) % batch.tasks  # every task in every batch
    return {k: v.to(device) for k, v in out.items()}


def batch_for(batch: dict, methods) -> dict:
    """The part of ``batch`` a model with ``methods`` takes: what any HF model takes, and the keys
    its methods read (HyperFormer++'s ``task_ids``; a model without them would refuse the key)."""
    keys = {"input_ids", "attention_mask", "labels"}.union(*(getattr(m, "batch_keys", ()) for m in methods))
    return {k: v for k, v in batch.items() if k in keys}


def make_peftlab(base: nn.Module, methods, family, copy: bool = True, attention_hook: bool = False) -> nn.Module:
    """peftlab's ``methods`` applied to a twin of ``base`` (``copy=False``: to ``base`` itself, for a
    process that builds one implementation and must not hold a second copy of the weights); with
    ``attention_hook`` the model runs under peftlab's attention hook even if no method attaches to it."""
    from peftlab.methods import apply_methods

    trains_base = any(m.trains_base for m in methods)
    model = twin(base, share_frozen=not trains_base) if copy else base
    apply_methods(model, methods, family)
    if attention_hook:
        from peftlab.methods.hooks.attention import use_attention_hook

        use_attention_hook(model)
    return model


def make_reference(base: nn.Module, case: CaseSpec, copy: bool = True) -> nn.Module:
    """peft's model for the case (``reference: peft``), the plain model all trained (``hf``) or the
    plain model untouched, nothing trained (``hf-stock``)."""
    if case.reference in ("hf", "hf-stock"):
        full = case.reference == "hf"
        model = twin(base, share_frozen=not full) if copy else base
        model.requires_grad_(full)
        return model
    import peft

    try:
        config = peft.get_peft_config(dict(case.peft))
    except KeyError as e:
        raise ConfigError(f"cases.{case.name}.peft.peft_type: peft has no method {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cases.{case.name}.peft: {e}") from None
    try:
        return peft.get_peft_model(twin(base, share_frozen=True) if copy else base, config)
    except (ValueError, KeyError, AttributeError, NotImplementedError) as e:
        raise ModelError(f"cases.{case.name}.peft: peft could not apply it: {e}") from None


@torch.no_grad()
def perturb_zero_adapters(model: nn.Module, seed: int = 0) -> None:
    """Give zero-initialised adapter tensors (LoRA's B) small random values, so that the init-loss
    check compares two functions that depend on every adapter tensor."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad and p.dtype.is_floating_point and not p.any():
            p.copy_(torch.randn(p.shape, generator=g).mul_(0.01))


def peft_name(name: str) -> Optional[str]:
    """peft's name for the peftlab adapter tensor ``name``, or None where peft has no such tensor."""
    for ours, theirs in _PEFT_WHOLE_NAMES.items():
        if name == ours or name.endswith("." + ours):
            return theirs
    for ours, theirs in PEFT_NAMES.items():
        if name.endswith(ours):
            return f"{_PEFT_PREFIX}{name[: -len(ours)]}{theirs}"
    return None


@torch.no_grad()
def align_adapters(ours: nn.Module, other: nn.Module) -> int:
    """Copy peftlab's adapter tensors into ``other``: another peftlab model (same names) or peft's
    (names through ``PEFT_NAMES``, reshaped where peft keeps the same values in another shape);
    returns how many tensors were copied. A per-head tensor of ours whose peft twin has one value
    (LLaMA-Adapter's gates: per head here, per layer in peft) first takes its first value in every
    head, so both models compute the same function."""
    targets = dict(other.named_parameters())
    copied = 0
    for name, p in ours.named_parameters():
        if not p.requires_grad:
            continue
        target = targets.get(name) if name in targets else targets.get(peft_name(name) or "-")
        if target is None or target is p:
            continue
        if target.numel() == 1 and p.numel() > 1:
            first = p.flatten()[0].item()
            p.fill_(first)
            target.fill_(first)
        elif target.numel() == p.numel():
            target.copy_(p.reshape(target.shape))
        else:
            continue
        copied += 1
    return copied + _align_prefix_rows(ours, targets)


@torch.no_grad()
def _align_prefix_rows(ours: nn.Module, targets: dict) -> int:
    """Prefix tuning without a reparametrisation: peftlab keeps each layer's rows, (H_kv, P, d) for
    keys and values, peft one (P, S·2·W) embedding whose columns run [layer][key/value][head][dim];
    returns 1 when the rows were copied into it."""
    from peftlab.methods.prefix import PrefixKV

    target = targets.get(_PEFT_WHOLE_NAMES["prefix_mlp.embedding"])
    sites = [m for m in ours.modules() if isinstance(m, PrefixKV) and m.shared is None]
    if target is None or not sites:
        return 0
    rows = torch.cat([t.permute(1, 0, 2).reshape(t.shape[1], -1) for m in sites for t in (m.key, m.value)], dim=1)
    if rows.shape != target.shape:
        return 0
    target.copy_(rows)
    return 1


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
