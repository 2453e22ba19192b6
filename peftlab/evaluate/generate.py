"""Batched generation for seq2seq and causal models: length-sorted batches, original order back."""

from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    sources: Sequence[str],
    *,
    max_source_length: int,
    max_new_tokens: int = 48,
    num_beams: int = 1,
    batch_size: int = 16,
    mixed_precision: str = "auto",
    progress: bool = False,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
) -> list[str]:
    """Generate one completion per source; deterministic (greedy or beam search).

    ``mixed_precision`` is a run's ``train.mixed_precision``, resolved for the model's device by the
    training loop's rule (``peftlab.env.resolve_precision``), so ``auto`` never emulates bf16."""
    from tqdm.auto import tqdm

    from peftlab.data.seq2seq import _ids_with_eos, collate
    from peftlab.env import resolve_precision

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids, _, _ = _ids_with_eos(tokenizer, sources, max_source_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    precision = resolve_precision(mixed_precision, device, training=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    causal = not model.config.is_encoder_decoder
    if causal:
        tokenizer.padding_side = "left"
    for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress):
        rows = order[start : start + batch_size]
        batch = collate([ids[r] for r in rows], None, tokenizer.pad_token_id)
        if causal:  # left-pad so every prompt ends where generation begins
            batch = _left_pad(batch, tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            gen = model.generate(
                **batch, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        if causal:
            gen = gen[:, batch["input_ids"].shape[1] :]
        for r, text in zip(rows, tokenizer.batch_decode(gen, skip_special_tokens=True)):
            out[r] = " ".join(text.split())
    model.train(was_training)
    return out


def _left_pad(batch: dict, pad_id: int) -> dict:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(1)
    new_ids, new_mask = torch.full_like(ids, pad_id), torch.zeros_like(mask)
    for i, n in enumerate(lengths.tolist()):
        new_ids[i, ids.shape[1] - n :] = ids[i, :n]
        new_mask[i, ids.shape[1] - n :] = 1
    return {"input_ids": new_ids, "attention_mask": new_mask}
