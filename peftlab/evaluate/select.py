"""Decoding settings chosen on the validation split, never the test.

Code-summarisation work decodes with beam search, a no-repeat n-gram size and a length penalty, and
the right values differ by model and task. ``eval.select`` names a small grid, e.g.
``{num_beams: [1, 4], no_repeat_ngram_size: [0, 3]}``; each generation task decodes a fixed-seed
sample of its validation rows under every combination, keeps the one with the best primary metric
(the earliest in grid order on a tie: the grid lists the cheaper settings first) and decodes the
test rows with it. The choice and every combination's validation score go to metrics.json.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Sequence

from peftlab.evaluate.generate import Decoding


def decoding_grid(base: Decoding, space: dict[str, list]) -> list[Decoding]:
    """Every combination of ``space``'s values over ``base`` (keys in the order given)."""
    keys = list(space)
    return [dataclasses.replace(base, **dict(zip(keys, values))) for values in itertools.product(*space.values())]


def select_decoding(task, base: Decoding, space: dict[str, list],
                    validate: Callable[[Decoding], dict]) -> tuple[Decoding, list[dict]]:
    """``(the best decoding, one row per combination: its settings and validation score)``;
    ``validate(decoding)`` returns the task's metrics on its validation rows."""
    key = task.primary_metric
    best, best_score, table = base, float("-inf"), []
    for decoding in decoding_grid(base, space):
        score = validate(decoding)[key]
        table.append({**{k: getattr(decoding, k) for k in space}, "valid_" + key: score})
        if score > best_score:
            best, best_score = decoding, score
    return best, table


def score_selected(model, tokenizer, task, examples: Sequence, valid: Sequence, *, decoding: Decoding,
                   space: dict[str, list], **kwargs) -> tuple[dict, list[str]]:
    """``score_task`` on ``examples``, with the decoding chosen on ``valid`` when ``space`` is set
    and the task generates (a ranked classification task does not decode)."""
    from peftlab.evaluate.score import score_task

    generates = task.kind == "generation" or getattr(task, "eval", "rank") == "generate"
    if not (space and valid and generates):
        return score_task(model, tokenizer, task, examples, decoding=decoding, **kwargs)
    chosen, table = select_decoding(
        task, decoding, space, lambda d: score_task(model, tokenizer, task, valid, decoding=d, **kwargs)[0])
    metrics, preds = score_task(model, tokenizer, task, examples, decoding=chosen, **kwargs)
    metrics["decoding"] = {k: getattr(chosen, k) for k in space}
    metrics["decoding_selection"] = table
    return metrics, preds
