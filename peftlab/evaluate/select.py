"""Decoding settings chosen on the validation split, never the test.

Code-summarisation work decodes with beam search, a no-repeat n-gram size and a length penalty, and
the right values differ by model and task. ``eval.select`` names a small grid, e.g.
``{num_beams: [1, 4], no_repeat_ngram_size: [0, 3]}``; each generation task decodes a fixed-seed
sample of its validation rows under every combination, keeps the one with the best primary metric
(the earliest in grid order on a tie: the grid lists the cheaper settings first) and decodes the
test rows with it. The choice and every combination's validation score go to metrics.json, and
what uses a finished run afterwards (``peftlab eval``, ``peftlab generate``) decodes with that
recorded choice (``recorded_decodings``) rather than choosing again.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Callable, Optional, Sequence

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


def generates(task) -> bool:
    """Whether ``task`` is scored on decoded text (a ranked classification task never decodes)."""
    return task.kind == "generation" or getattr(task, "eval", "rank") == "generate"


def recorded_decodings(metrics: dict, names: Sequence[str]) -> dict[str, dict]:
    """Each task's decoding as a run chose it on validation (``metrics.json``'s ``task_metrics[name]
    ["decoding"]``), by task name; a task that chose nothing is absent."""
    per_task = (metrics or {}).get("task_metrics") or {}
    return {n: dict(per_task[n]["decoding"]) for n in names if isinstance(per_task.get(n, {}).get("decoding"), dict)}


def score_selected(model, tokenizer, task, examples: Sequence, valid: Sequence, *, decoding: Decoding,
                   space: dict[str, list], chosen: Optional[dict] = None, **kwargs) -> tuple[dict, list[str]]:
    """``score_task`` on ``examples``, with the decoding chosen on ``valid`` when ``space`` is set
    and the task generates. ``chosen``: settings decided already (a finished run's recorded choice,
    the user's flags), applied over ``decoding`` with no selection and recorded as ``decoding``."""
    from peftlab.evaluate.score import score_task

    if chosen is not None:
        metrics, preds = score_task(model, tokenizer, task, examples,
                                    decoding=dataclasses.replace(decoding, **chosen), **kwargs)
        if chosen and generates(task):
            metrics["decoding"] = dict(chosen)
        return metrics, preds
    if not (space and valid and generates(task)):
        return score_task(model, tokenizer, task, examples, decoding=decoding, **kwargs)
    started = time.perf_counter()
    best, table = select_decoding(
        task, decoding, space, lambda d: score_task(model, tokenizer, task, valid, decoding=d, **kwargs)[0])
    selecting = time.perf_counter() - started
    metrics, preds = score_task(model, tokenizer, task, examples, decoding=best, **kwargs)
    metrics["select_seconds"] = selecting  # the decoding grid on validation (eval_seconds: the test split)
    metrics["decoding"] = {k: getattr(best, k) for k in space}
    metrics["decoding_selection"] = table
    return metrics, preds
