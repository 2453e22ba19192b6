"""Scoring a trained model: each task's metrics on the test split (its decoding chosen on
validation when ``eval.select`` asks), per-row statistics for intervals, perplexity, the
model-free floors, the prediction rows, and where the scoring's time went (``seconds``).
``peftlab.lab.run`` calls ``scored`` once training is over; ``peftlab.lab.finished`` and
``peftlab.lab.evals`` re-score finished runs through ``score``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from peftlab.lab import rundir
from peftlab.lab.rundata import wants_task_ids
from peftlab.schema import RunConfig


def score(model, tokenizer, cfg: RunConfig, rows, valid_rows=(),
          decodings: Optional[dict[str, dict]] = None, row_stats: Optional[dict] = None) -> tuple[dict, list[dict]]:
    """Each task's metrics on its ``rows`` (see ``load_examples``), and the prediction rows.

    One task: its metrics at the top level too (``bleu``, ``accuracy``...); always per task under
    ``task_metrics``. With ``eval.select``, a generation task's decoding is chosen on its
    ``valid_rows`` first (``peftlab.evaluate.select``). ``decodings`` (by task name: settings over
    ``eval``'s, e.g. a finished run's recorded choice) fixes every task's decoding: none is chosen.
    ``row_stats``: filled with each task's per-row statistics (``rows_record``), for intervals."""
    from peftlab.data.seq2seq import tail_tokens
    from peftlab.evaluate.generate import Decoding
    from peftlab.evaluate.select import score_selected
    from peftlab.tasks.base import sample_rows

    multi = len(cfg.data.tasks) > 1
    per_task, out_rows = {}, []
    for t, task in enumerate(cfg.data.tasks):
        examples = [e for i, e in rows if i == t]
        if not examples:
            continue
        chosen = None if decodings is None else decodings.get(task.describe(), {})
        selects = cfg.eval.select and chosen is None
        valid = sample_rows([e for i, e in valid_rows if i == t], cfg.eval.select_examples) if selects else []
        metrics, preds = score_selected(
            model, tokenizer, task, examples, valid, space=cfg.eval.select, chosen=chosen,
            max_source_length=cfg.data.max_source_length,
            decoding=Decoding.of(cfg.eval), batch_size=cfg.eval.batch_size,
            mixed_precision=cfg.train.mixed_precision, keep_tail=tail_tokens(tokenizer, task.prompt_tail),
            task_id=t if multi and wants_task_ids(cfg) else None,
        )
        per_task[task.describe()] = metrics
        if row_stats is not None:
            row_stats[task.describe()] = rows_record(task, preds, examples, metrics)
        out_rows += [{**({"task": task.describe()} if multi else {}), **e.meta, "prediction": p, "reference": e.target}
                     for e, p in zip(examples, preds)]
    flat = dict(next(iter(per_task.values()))) if len(per_task) == 1 else {
        "eval_seconds": sum(m["eval_seconds"] for m in per_task.values()),
        "eval_examples": sum(m["eval_examples"] for m in per_task.values())}
    flat["task_metrics"] = per_task
    return flat, out_rows


def scored(cfg: RunConfig, run_dir: Path, model, tok, splits, trained: dict) -> dict:
    """Score the test split (decoding chosen on validation when ``eval.select`` asks) and write
    predictions; the metrics are ``trained``, the scores, the perplexity (``eval.perplexity``) and
    the task floors."""
    import time

    train_rows, eval_rows, test = splits
    stats: dict = {}
    clock = time.perf_counter()
    scores, rows = score(model, tok, cfg, test, eval_rows, row_stats=stats)
    scoring = time.perf_counter() - clock
    ppl_texts = perplexity_texts(cfg, not model.config.is_encoder_decoder)
    if ppl_texts:
        scores.update(perplexity_scores(model, tok, cfg, ppl_texts))
    perplexing = time.perf_counter() - clock - scoring
    write_predictions(run_dir, rows)
    floor_rows: dict = {}
    floors = floors_record(cfg, train_rows, eval_rows, test, scores, floor_rows)
    rundir.write_json(run_dir / rundir.ROW_STATS, with_floor_rows(stats, floor_rows))
    selecting = sum(m.get("select_seconds", 0.0) for m in scores["task_metrics"].values())
    seconds = {"train": trained.get("train_seconds"), "select": selecting, "test": scoring - selecting,
               "perplexity": perplexing, "floors": time.perf_counter() - clock - scoring - perplexing}
    spent = sum(v for v in seconds.values() if v)
    seconds["eval_share"] = (selecting + seconds["test"]) / spent if spent else None  # of train + scoring
    return {
        **with_scores(trained, scores),
        "test_split": cfg.data.test_split,
        "test_examples": scores["eval_examples"],
        "seconds": seconds,  # where this scoring's time went (train: the training's, recorded when it ended)
        **floors,
    }


def rows_record(task, predictions, examples, metrics: dict) -> dict:
    """``{"rows": [row id...], "metrics": {name: RowStats json}}``: the per-row statistics of the
    task's metrics that reproduce its figures (``peftlab.evaluate.rows.checked``), and an id of each
    row (its source and target) so that paired tests only pair the same rows."""
    import hashlib

    from peftlab.evaluate.rows import checked

    ids = [hashlib.sha256(f"{e.source}\0{e.target}".encode()).hexdigest()[:12] for e in examples]
    kept = checked(task.row_stats(predictions, examples), metrics)
    return {"rows": ids, "metrics": {k: r.to_json() for k, r in kept.items()}}


def with_floor_rows(stats: dict, floor_rows: dict) -> dict:
    """The row-statistics file: per task, the method's and each floor's."""
    return {"version": 1, "tasks": {t: {**rec, "floors": floor_rows.get(t, {})} for t, rec in stats.items()}}


def with_scores(trained: dict, scores: dict) -> dict:
    """The run's fields and its scores at top level; a score whose name is already a run field
    (method_name's sub-token ``precision`` beside the training ``precision``, "bf16") stays only in
    ``task_metrics``, never replacing what the run recorded."""
    skip = {"eval_examples", "truncated_prompts"}
    return {**trained, **{k: v for k, v in scores.items() if k not in skip and k not in trained}}


def floors_record(cfg: RunConfig, train_rows, valid_rows, test_rows, scores: dict, rows: Optional[dict] = None) -> dict:
    """``floors`` (model-free baselines per task, on the same rows) and ``beats_floors`` for metrics.json;
    ``rows`` is filled with each floor's per-row statistics."""
    if not cfg.eval.floors:
        return {}
    from peftlab.lab.floors import beats, task_floors

    floors = task_floors(cfg.data.tasks, train_rows, valid_rows, test_rows, rows=rows)
    return {"floors": floors, "beats_floors": {t: beats(scores["task_metrics"][t], f) for t, f in floors.items()}}


def perplexity_texts(cfg: RunConfig, causal: bool) -> Optional[list[str]]:
    """The texts of ``eval.perplexity`` (None when unset); a seq2seq model is refused by name."""
    from peftlab.errors import ConfigError
    from peftlab.evaluate.perplexity import read_texts

    if not cfg.eval.perplexity:
        return None
    if not causal:
        raise ConfigError(f"eval.perplexity: perplexity needs a causal LM; {cfg.model.name} is an encoder-decoder")
    return [text for _, text in read_texts(cfg.eval.perplexity)]


def perplexity_scores(model, tok, cfg: RunConfig, texts: list[str], window: Optional[int] = None,
                stride: Optional[int] = None) -> dict:
    """``{"ppl", "ppl_tokens", ...}`` of ``model`` on ``texts`` with the run's window settings."""
    from peftlab.errors import ConfigError
    from peftlab.evaluate.perplexity import default_window, perplexity

    if window is None:
        window = cfg.eval.perplexity_window or default_window(model, cfg.data.max_source_length
                                                              + cfg.data.max_target_length)
    if stride is None:
        stride = cfg.eval.perplexity_stride or max(window // 2, 1)
    if window < 2 or not 1 <= stride <= window:
        raise ConfigError(f"eval.perplexity: window must be >= 2 and stride in [1, window]; got window {window}, "
                          f"stride {stride}")
    out = perplexity(model, tok, texts, window=window, stride=stride, batch_size=cfg.eval.batch_size,
                     mixed_precision=cfg.train.mixed_precision)
    return {"ppl": out["ppl"], "ppl_tokens": out["tokens"], "ppl_window": out["window"], "ppl_stride": out["stride"]}


def write_predictions(run_dir: Path, rows: list[dict], name: str = rundir.PREDICTIONS) -> None:
    rundir.write_text(run_dir / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
