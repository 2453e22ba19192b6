"""Batched generation for seq2seq and causal models: length-sorted batches, original order back.

Prompts arrive as token ids (``peftlab.data.seq2seq.prompt_ids`` makes them the way training saw
them). Decoder prompts are left-padded so every row ends where generation begins; the KV cache
is on. Greedy and beam search are deterministic; sampling is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass(frozen=True)
class Decoding:
    """How to decode (``peftlab.schema.EvalSpec`` carries the same fields)."""

    max_new_tokens: int = 48
    num_beams: int = 1
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    @classmethod
    def of(cls, spec) -> "Decoding":
        import dataclasses

        return cls(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(cls) if hasattr(spec, f.name)})

    def kwargs(self) -> dict:
        kw = dict(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=self.do_sample,
                  no_repeat_ngram_size=self.no_repeat_ngram_size, repetition_penalty=self.repetition_penalty)
        if self.num_beams > 1:
            kw["length_penalty"] = self.length_penalty
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p)
        return kw


def autocast_dtype(mixed_precision: str, device: torch.device):
    """The autocast dtype for a run's ``train.mixed_precision`` on ``device``, by the training loop's
    rule (``peftlab.device.resolve_precision``): ``auto`` never emulates bf16; None = fp32."""
    from peftlab.device import resolve_precision

    precision = resolve_precision(mixed_precision, device, training=False)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    ids: Sequence[list[int]],
    decoding: Decoding = Decoding(),
    *,
    batch_size: int = 16,
    mixed_precision: str = "auto",
    progress: bool = False,
) -> list[str]:
    """One completion per prompt (token ids), as whitespace-normalised text."""
    from tqdm.auto import tqdm

    from peftlab.data.seq2seq import collate

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    dtype = autocast_dtype(mixed_precision, device)
    causal = not model.config.is_encoder_decoder
    generator_state = None
    if decoding.do_sample:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(decoding.seed)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress):
            rows = order[start : start + batch_size]
            batch = collate([list(ids[r]) for r in rows], None, tokenizer.pad_token_id)
            if causal:  # left-pad so every prompt ends where generation begins
                batch = left_pad(batch, tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                gen = model.generate(**batch, **decoding.kwargs(), pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            if causal:
                gen = gen[:, batch["input_ids"].shape[1] :]
            for r, text in zip(rows, tokenizer.batch_decode(gen, skip_special_tokens=True)):
                out[r] = " ".join(text.split())
    finally:
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return out


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
    keep_tail: int = 0,
) -> list[str]:
    """Generate for prompt texts, encoded as training encodes them; deterministic."""
    from peftlab.data.seq2seq import prompt_ids

    ids, _, _ = prompt_ids(tokenizer, sources, max_source_length, causal=not model.config.is_encoder_decoder,
                           keep_tail=keep_tail)
    decoding = Decoding(max_new_tokens=max_new_tokens, num_beams=num_beams,
                        no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty)
    return generate_ids(model, tokenizer, ids, decoding, batch_size=batch_size, mixed_precision=mixed_precision,
                        progress=progress)


def left_pad(batch: dict, pad_id: int) -> dict:
    """Right-padded rows moved to the right edge (what a decoder's generation needs)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(1)
    new_ids, new_mask = torch.full_like(ids, pad_id), torch.zeros_like(mask)
    for i, n in enumerate(lengths.tolist()):
        new_ids[i, ids.shape[1] - n :] = ids[i, :n]
        new_mask[i, ids.shape[1] - n :] = 1
    return {"input_ids": new_ids, "attention_mask": new_mask}


def _left_pad(batch: dict, pad_id: int) -> dict:  # kept for callers of the old name
    return left_pad(batch, pad_id)


@torch.no_grad()
def choice_logprobs(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    choices: Sequence[str],
    *,
    batch_size: int = 16,
    mixed_precision: str = "auto",
    task_ids: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """(N, C) total log-likelihood of each choice (its tokens + EOS) after each prompt.

    An encoder-decoder scores the choice as the decoder's target; a decoder as the continuation of
    the prompt. Ranking label words this way never answers outside the label set."""
    from peftlab.data.seq2seq import collate, prompt_ids

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    causal = not model.config.is_encoder_decoder
    choice_ids, _, _ = prompt_ids(tokenizer, choices, 10_000)  # each choice + eos
    pairs = [(i, c) for i in range(len(prompts)) for c in range(len(choices))]
    scores = torch.zeros(len(prompts), len(choices), dtype=torch.float64)
    dtype = autocast_dtype(mixed_precision, device)
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            if causal:
                inputs = [list(prompts[i]) + choice_ids[c] for i, c in chunk]
                labels = [[-100] * len(prompts[i]) + choice_ids[c] for i, c in chunk]
            else:
                inputs = [list(prompts[i]) for i, _ in chunk]
                labels = [choice_ids[c] for _, c in chunk]
            batch = collate(inputs, labels, tokenizer.pad_token_id)
            if task_ids is not None:
                batch["task_ids"] = torch.tensor([task_ids[i] for i, _ in chunk], dtype=torch.long)
            labels_t = batch.pop("labels").to(device)
            model_in = {k: v.to(device) for k, v in batch.items()}
            if not causal:
                model_in["labels"] = labels_t  # builds decoder inputs by shifting; the loss is ignored
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(**model_in).logits.float()
            if causal:
                logits, labels_t = logits[:, :-1], labels_t[:, 1:]
            logp = torch.log_softmax(logits, dim=-1)
            mask = labels_t != -100
            tok = logp.gather(-1, labels_t.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask
            for (i, c), s in zip(chunk, tok.sum(-1).tolist()):
                scores[i, c] = s
    finally:
        model.train(was_training)
    return scores
