"""Scoring a model on a task's examples: generate (or rank label words), then the task's metrics.

Tasks are duck-typed here (``kind``, ``choices()``, ``metrics()``, ``eval``), so evaluation does not
import the task modules. Prompts are encoded as training encoded them.
"""

from __future__ import annotations

import time
from typing import Sequence

from peftlab.evaluate.generate import Decoding, choice_logprobs, generate_ids


def score_task(model, tokenizer, task, examples: Sequence, *, max_source_length: int, decoding: Decoding,
               batch_size: int, mixed_precision: str, keep_tail: int = 0, task_id: int | None = None,
               progress: bool = False) -> tuple[dict, list[str]]:
    """``(metrics, predictions)`` of ``model`` on ``examples`` of ``task``."""
    from peftlab.data.seq2seq import prompt_ids

    causal = not model.config.is_encoder_decoder
    ids, truncated, _ = prompt_ids(tokenizer, [e.source for e in examples], max_source_length, causal=causal,
                                   keep_tail=keep_tail)
    t0 = time.perf_counter()
    if task.kind == "classification" and getattr(task, "eval", "rank") == "rank":
        choices = task.choices()
        scores = choice_logprobs(model, tokenizer, ids, choices, batch_size=batch_size,
                                 mixed_precision=mixed_precision,
                                 task_ids=[task_id] * len(ids) if task_id is not None else None)
        preds = [choices[i] for i in scores.argmax(dim=1).tolist()]
    else:
        if task_id is not None:
            _set_generation_task(model, task_id)
        preds = generate_ids(model, tokenizer, ids, decoding, batch_size=batch_size,
                             mixed_precision=mixed_precision, progress=progress)
    metrics = dict(task.metrics(preds, examples))
    metrics["eval_seconds"] = time.perf_counter() - t0
    metrics["eval_examples"] = len(examples)
    metrics["truncated_prompts"] = truncated
    return metrics, preds


def _set_generation_task(model, task_id: int) -> None:
    """Multi-task methods read the task of a generation from the model (generate() cannot carry
    a per-row tensor through every decoding step): ``set_task`` on any module that has it."""
    for m in model.modules():
        if hasattr(m, "set_task"):
            m.set_task(task_id)
