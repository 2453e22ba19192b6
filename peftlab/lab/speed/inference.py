"""Timing an inference case: each implementation's teacher-forced forward pass over the batch and
its greedy generation of exactly ``inference.new_tokens`` tokens, interleaved.

The implementations are a train case's (``peftlab.lab.speed.impls``: peftlab, the ``compare``
method lists, peft or the untouched model, ``hf-stock``), built on one base and holding the same
adapter weights, in eval mode, under ``torch.no_grad`` and the precision's autocast. The forward
pass is ``model(**batch)``, labels included (the loss a perplexity or label ranking computes).
Generation starts from the sources of the batch's first ``inference.rows`` rows (a decoder's first
``inference.prompt`` tokens), greedy, ``min_new_tokens = max_new_tokens``, with the KV cache.
tokens/s counts the batch's tokens for the forward pass and the new tokens for generation. Each row
keeps what its last warm-up call computed beside peftlab's: the forward pass's loss, and the share
of rows whose generated tokens are peftlab's (the same method on the same weights: 1, up to float
noise).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from peftlab.lab.speed import build, timing
from peftlab.lab.speed.impls import Impl, build_model, impl_names, methods_of, share_weights
from peftlab.lab.speed.spec import BatchShape, CaseSpec, SpeedSpec


def calls(model: nn.Module, batch: dict, case: CaseSpec, shape: BatchShape, device: torch.device,
          dtype) -> dict[str, Callable[[], Any]]:
    """The timed calls of one implementation: ``forward``, and ``generate`` unless ``new_tokens`` is 0."""
    inference, config = case.inference, model.config
    prompt = batch["input_ids"][: inference.rows or shape.size]
    if not config.is_encoder_decoder:
        prompt = prompt[:, : inference.prompt or shape.source]
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    generate = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt), "do_sample": False, "num_beams": 1,
                "max_new_tokens": inference.new_tokens, "min_new_tokens": inference.new_tokens,
                **({"pad_token_id": pad} if pad is not None else {})}

    def quiet(fn):
        def call():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                return fn()
        return call

    out = {"forward": quiet(lambda: model(**batch))}
    if inference.new_tokens:
        out["generate"] = quiet(lambda: model.generate(**generate))
    return out


def tokens_of(phase: str, case: CaseSpec, shape: BatchShape) -> int:
    """What tokens/s counts: the batch's tokens (forward), or the tokens generated (generate)."""
    return shape.tokens() if phase == "forward" else (case.inference.rows or shape.size) * case.inference.new_tokens


def time_inference(spec: SpeedSpec, case: CaseSpec, precision: str, device: torch.device, log=print) -> list[dict]:
    """Build every implementation of ``case``, then time each phase's calls interleaved."""
    base = build.build_base(spec.model_of(case), device)
    shape = spec.batch_of(case)
    batch = build.make_batch(shape, base.model.config, device)
    dtype = build.autocast_dtype(precision)
    impls = [Impl(name, build_model(name, base, case).eval(), methods_of(case, name)) for name in impl_names(case)]
    del base
    copied = share_weights(impls)
    by_impl = {i.name: calls(i.model, i.batch(batch), case, shape, device, dtype) for i in impls}
    rows = []
    for phase in by_impl["peftlab"]:
        phase_calls = {name: fns[phase] for name, fns in by_impl.items()}
        # at least one warm-up call each: its outputs are what the implementations are checked on
        outputs, errors = timing.warm_up(phase_calls, max(1, spec.warmup_of(case)), device, log=log,
                                         label=f"{case.name} {precision} {phase} ",
                                         may_fail=lambda name: not name.startswith("peftlab"))
        checks = {i.name: _agreement(phase, outputs, i.name, case.inference.new_tokens) for i in impls}
        del outputs  # a forward pass's logits: (batch, tokens, vocabulary) per implementation
        times = timing.interleave({n: c for n, c in phase_calls.items() if n not in errors}, spec.reps_of(case), device)
        tokens = tokens_of(phase, case, shape)
        for impl in impls:
            row = {"kind": "inference", "case": case.name, "precision": precision, "phase": phase, "impl": impl.name,
                   "batch": shape.label(), "tokens_per_call": tokens, "trainable_params": build.trainable(impl.model),
                   "adapters_copied": copied.get(impl.name), "error": errors.get(impl.name),
                   **checks[impl.name]}
            if times.get(impl.name):
                row.update(timing.summary(times[impl.name], "seconds"))
                row["tokens_per_s"] = tokens / row["seconds_median"]
            rows.append(row)
    return rows


def _agreement(phase: str, outputs: dict, name: str, new_tokens: int) -> dict:
    """What the implementations' last warm-up call computed, to check that they agree: the forward
    pass's loss (equal for the same method on the same weights), and the share of generated rows
    whose new tokens are peftlab's."""
    if name not in outputs:
        return {}
    if phase == "forward":
        return {"init_loss": float(outputs[name].loss)}
    ours, theirs = outputs["peftlab"][:, -new_tokens:], outputs[name][:, -new_tokens:]
    return {"same_tokens": float((ours == theirs).all(dim=1).float().mean())}


def run_for_memory(model: nn.Module, batch: dict, case: CaseSpec, shape: BatchShape, device, dtype, n: int) -> None:
    """What the memory worker runs for an inference case: every phase's call, ``n`` times."""
    model.eval()
    fns = calls(model, batch, case, shape, device, dtype)
    for _ in range(n):
        for fn in fns.values():
            fn()
