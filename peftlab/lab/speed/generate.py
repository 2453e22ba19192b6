"""Timing a generate case: documenting code→doc test functions, peftlab's way against the plain one.

Implementations, each decoding the same ``examples`` sources with the same settings (greedy or
beams, ``max_new_tokens``, KV cache on):

* ``loop``: a plain per-example ``model.generate`` loop (batch of one, no padding);
* ``batched``: peftlab's ``generate_texts`` (length-sorted batches, original order back);
* with ``methods`` (LoRA): ``<method> unmerged`` and ``<method> merged`` batched, beside ``batched``
  on the base model: merged LoRA (as ``peftlab merge`` writes it: updates folded in, plain linear
  layers back) must decode at the base model's speed; the unmerged overhead is reported.

Repetitions interleave the implementations. ``agreement``: the share of ``batched`` outputs equal
to the loop's (batching must not change what decoding writes, beyond float noise from padding),
and of ``merged`` outputs equal to ``unmerged`` ones.
"""

from __future__ import annotations

import torch

from peftlab.lab.speed import build, timing


def _sources(gen, tokenizer, causal: bool) -> tuple[list[str], int]:
    """The split's sources as a run's evaluation gives them (a decoder reads the task's decoder prompt),
    and how many tokens of the prompt's fixed ending a truncation keeps."""
    from peftlab.data.seq2seq import tail_tokens
    from peftlab.tasks import default_task

    task = default_task()
    examples = task.examples(gen.split, gen.examples)
    texts = [(task.render_for_decoder(e) if causal else e).source for e in examples]
    return texts, tail_tokens(tokenizer, task.prompt_tail)


def _loop(model, tokenizer, sources, gen, dtype, keep_tail: int) -> list[str]:
    """What a user without peftlab writes: one ``generate`` call per example (the prompts encoded
    as ``generate_texts`` encodes them: an encoder's ending with EOS, a decoder's starting with BOS)."""
    from peftlab.data.seq2seq import prompt_ids

    ids, _, _ = prompt_ids(tokenizer, sources, gen.max_source_length, causal=not model.config.is_encoder_decoder,
                           keep_tail=keep_tail)
    out = []
    device = next(model.parameters()).device
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for row in ids:
            x = torch.tensor([row], device=device)
            y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=gen.max_new_tokens,
                               num_beams=gen.num_beams, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id)
            if not model.config.is_encoder_decoder:
                y = y[:, x.shape[1]:]
            out.append(" ".join(tokenizer.decode(y[0], skip_special_tokens=True).split()))
    return out


def _batched(model, tokenizer, sources, gen, precision, keep_tail: int) -> list[str]:
    from peftlab.evaluate.generate import generate_texts

    return generate_texts(model, tokenizer, sources, max_source_length=gen.max_source_length,
                          max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams, batch_size=gen.batch_size,
                          mixed_precision={"fp32": "no"}.get(precision, precision), keep_tail=keep_tail)


def time_generate(spec, case, precision: str, device, log=print) -> list[dict]:
    from peftlab.methods import apply_methods
    from peftlab.methods.export import merged_model

    gen, dtype = case.generate, build.autocast_dtype(precision)
    base = build.build_base(spec.model_of(case), device)
    if base.tokenizer is None:
        from peftlab.errors import ConfigError

        raise ConfigError(f"cases.{case.name}: a generate case needs model.name (a model with a tokenizer)")
    tok = base.tokenizer
    sources, tail = _sources(gen, tok, causal=not base.model.config.is_encoder_decoder)
    plain = base.model.eval()
    impls = {"loop": lambda: _loop(plain, tok, sources, gen, dtype, tail),
             "batched": lambda: _batched(plain, tok, sources, gen, precision, tail)}
    if case.methods:
        label = " + ".join(m.name for m in case.methods)
        unmerged = build.make_peftlab(plain, case.methods, base.family).eval()
        build.perturb_zero_adapters(unmerged)  # a trained-looking adapter: B != 0
        merged = build.twin(plain, share_frozen=False)  # merging writes into its own weights
        apply_methods(merged, case.methods, base.family)
        build.align_adapters(unmerged, merged)
        merged = merged_model(merged).eval()  # what `peftlab merge` writes: plain layers, updates folded in
        impls[f"{label} unmerged"] = lambda: _batched(unmerged, tok, sources, gen, precision, tail)
        impls[f"{label} merged"] = lambda: _batched(merged, tok, sources, gen, precision, tail)
    # one warm-up pass each, whose outputs are compared below
    outputs, _ = timing.warm_up(impls, 1, device, log=log, label=f"{case.name} {precision} ")
    times = timing.interleave(impls, spec.reps_of(case), device)
    names = list(impls)
    new_tokens = {name: sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs)
                  for name, outs in outputs.items()}
    rows = []
    for name in names:
        stats = timing.summary(times[name], "seconds")
        # batching must not change the base model's outputs, nor merging the adapter's
        ref = {"batched": "loop", f"{label} merged": f"{label} unmerged"}.get(name) if case.methods else (
            "loop" if name == "batched" else None)
        rows.append({"kind": "generate", "case": case.name, "precision": precision, "impl": name,
                     "examples": len(sources), "batch_size": 1 if name == "loop" else gen.batch_size,
                     "num_beams": gen.num_beams, "max_new_tokens": gen.max_new_tokens,
                     **stats, "examples_per_s": len(sources) / stats["seconds_median"],
                     "new_tokens_per_s": new_tokens[name] / stats["seconds_median"],
                     "agreement": None if ref is None else
                     sum(a == b for a, b in zip(outputs[name], outputs[ref])) / len(sources)})
    by = {r["impl"]: r for r in rows}
    for r in rows:
        if r["impl"] == "batched":
            r["vs_loop"] = by["loop"]["seconds_median"] / r["seconds_median"]
        elif r["impl"] != "loop":
            r["vs_base_batched"] = by["batched"]["seconds_median"] / r["seconds_median"]
    return rows


def dry_run_generate(spec, case, base) -> list[dict]:
    trainable = build.trainable(build.make_peftlab(base.model, case.methods, base.family)) if case.methods else 0
    return [{"case": case.name, "impl": "generate", "trainable_params": trainable,
             "batch": f"{case.generate.examples} examples, batch {case.generate.batch_size}, "
                      f"{case.generate.num_beams} beam(s)"}]


def table(rows: list[dict]) -> str:
    lines = ["| case | precision | impl | examples | batch | beams | s per pass (median) | min–max | examples/s "
             "| new tokens/s | speed-up | same output |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "vs_loop" in r:
            speed = f"{r['vs_loop']:.2f}× loop"
        elif "vs_base_batched" in r:
            speed = f"{r['vs_base_batched']:.2f}× base"
        else:
            speed = ""
        lines.append(f"| {r['case']} | {r['precision']} | {r['impl']} | {r['examples']} | {r['batch_size']} | "
                     f"{r['num_beams']} | {r['seconds_median']:.2f} | {r['seconds_min']:.2f}–{r['seconds_max']:.2f} | "
                     f"{r['examples_per_s']:.1f} | {r['new_tokens_per_s']:.0f} | {speed} | "
                     f"{'' if r['agreement'] is None else format(r['agreement'], '.0%')} |")
    return "\n".join(lines)
