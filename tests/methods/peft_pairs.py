"""A peftlab model beside HF peft's on one base with the same adapter values, for the parity tests of
the catalogue (``test_lora_variants_parity_peft.py``, ``test_catalogue_parity_peft.py``).

peft names a layer's tensor ``base_model.model.<layer>.<tensor>.default[.weight]``; ``pair`` copies
peft's values (random, nonzero) into peftlab's tensor of the same layer through a suffix table, and
checks that every trainable tensor of ours got one.
"""

from __future__ import annotations

import copy

import torch

from peftlab.methods import apply_methods, peft_state
from peftlab.methods.export import export_peft

from conftest import build_llama, build_t5, logits

PREFIX = "base_model.model."
BUILD = {"t5": build_t5, "llama": build_llama}
TARGETS = {"t5": ["q", "v"], "llama": ["q_proj", "v_proj"]}


def pair(family: str, peft_config, ours: list, names: dict[str, str], *, scale: float = 0.1, seed: int = 3,
         keep: tuple[str, ...] = ()):
    """(peft's model, ours) on one base. ``names``: peft's suffix (``.default`` dropped) -> ours. peft's
    trainable tensors get random values first (``keep``: suffixes perturbed around their init instead,
    as DoRA's magnitudes), then ours take them."""
    import peft

    base = BUILD[family]()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config)
    apply_methods(base, ours)
    g = torch.Generator().manual_seed(seed)
    params, copied = dict(base.named_parameters()), set()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if not p.requires_grad:
                continue
            short = name[len(PREFIX):].replace(".default", "")
            suffix = next(s for s in names if short.endswith(s))
            noise = torch.randn(p.shape, generator=g) * scale
            p.copy_(p + noise if any(short.endswith(k) for k in keep) else noise)
            target = short[: -len(suffix)] + names[suffix]
            params[target].copy_(p)
            copied.add(target)
    assert copied == set(peft_state(base).trainable_names()), "peft and peftlab train different tensors"
    return theirs, base


def sgd_step(model, batch, lr: float = 0.5, extra=None) -> None:
    """One plain SGD step on the model's loss (+ ``extra()``, a method's own loss term)."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    loss = model(**batch).loss
    if extra is not None:
        loss = loss + extra()
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)
    model.eval()


def assert_forward_and_step_match(family: str, theirs, ours, batch, atol: float = 1e-5, lr: float = 0.5) -> None:
    """Same logits and trainable counts; after one SGD step on each, the same logits again (and moved)."""
    before = logits(theirs, batch)
    assert (before - logits(BUILD[family](), batch)).abs().max() > 1e-3, "the adapter did not move the outputs"
    torch.testing.assert_close(logits(ours, batch), before, atol=atol, rtol=0)
    assert peft_state(ours).trainable_params(ours) == theirs.get_nb_trainable_parameters()[0]
    sgd_step(theirs, batch, lr)
    sgd_step(ours, batch, lr)
    after = logits(theirs, batch)
    assert (after - before).abs().max() > 1e-3, "the step did not move the outputs"
    torch.testing.assert_close(logits(ours, batch), after, atol=atol, rtol=0)


def assert_peft_loads_export(family: str, ours, batch, tmp_path, peft_type: str, atol: float = 1e-5) -> dict:
    """``export_peft`` writes what ``PeftModel.from_pretrained`` loads onto a fresh base, with our logits.
    (AdaLoRA loads trainable: peft 0.21's AdaLoRA in inference mode fails on a batch with labels, its
    forward reading ``trainable_adapter_name``, which only a trainable load sets.)"""
    import json

    import peft

    export_peft(ours, tmp_path / "peft", "tiny")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == peft_type
    theirs = peft.PeftModel.from_pretrained(BUILD[family](), tmp_path / "peft", is_trainable=peft_type == "ADALORA")
    torch.testing.assert_close(logits(theirs, batch), logits(ours, batch), atol=atol, rtol=0)
    return config


def assert_merges_match(theirs, ours, batch, atol: float = 1e-5) -> None:
    """``merged_model`` gives peft's ``merge_and_unload`` weights, and our unmerged outputs."""
    from peftlab.methods.export import merged_model

    expected = logits(ours, batch)
    merged_theirs = theirs.merge_and_unload()
    merged = merged_model(ours)
    torch.testing.assert_close(logits(merged, batch), expected, atol=atol, rtol=0)
    params = dict(merged.named_parameters())
    for name, p in merged_theirs.named_parameters():
        torch.testing.assert_close(params[name], p, atol=atol, rtol=0, msg=name)
