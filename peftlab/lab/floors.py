"""Floors: what a method's score must beat before a table means anything.

On code→doc the constant output "Return a list of the ." outscored every fine-tuned method of the
first bench, so every task's scores come with model-free baselines computed on the same
rows, scored by the task's own metrics:

* generation: the **best constant output**, chosen on the validation split (never the test) among
  the most frequent training targets, their most frequent word prefixes and most frequent words;
  and **nearest-neighbour retrieval**, the training target of the training input most similar to
  the test input under BM25 (``bm25s``; terms are words and their snake/camel sub-tokens);
* classification: the **majority class** of the training split, and the same retrieval (the label
  of the nearest training input).

Tasks are duck-typed (``kind``, ``primary_metric``, ``choices()``, ``metrics()``), like
``peftlab.evaluate.score``. Everything here is a function of the examples alone: no model. That is
why ``task_floors`` keeps what it computed (``PEFTLAB_CACHE/floors/``, keyed on the rows, the task
config and the code and library versions that compute floors): every method and seed of a bench
scores the same rows, and BM25 over a training split costs seconds a run.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

_WORD = re.compile(r"\w+")
_PIECE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def terms(text: str) -> list[str]:
    """BM25 terms: each word lower-cased, plus its sub-tokens when it has several (``get_value``,
    ``getValue`` -> get value), so code and prose meet."""
    out = []
    for word in _WORD.findall(text):
        out.append(word.lower())
        pieces = [p.lower() for part in word.split("_") for p in _PIECE.findall(part)]
        if len(pieces) > 1:
            out += pieces
    return out


def retrieve(train_sources: Sequence[str], queries: Sequence[str]) -> list[int]:
    """For each query, the index of the most similar training source under BM25 (Lucene variant,
    k1 = 1.5, b = 0.75), or -1 for a query that shares no term with any source."""
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    corpus = [terms(s) for s in train_sources]
    index = bm25s.BM25()
    index.index([c or ["\x00"] for c in corpus], show_progress=False)
    vocab = {t for c in corpus for t in c}
    out = [-1] * len(queries)
    asked = [(i, [t for t in terms(q) if t in vocab]) for i, q in enumerate(queries)]
    asked = [(i, q) for i, q in asked if q]
    if asked:
        docs, scores = index.retrieve([q for _, q in asked], k=1, show_progress=False)
        for (i, _), doc, score in zip(asked, docs[:, 0].tolist(), scores[:, 0].tolist()):
            out[i] = int(doc) if score > 0 else -1
    return out


def constant_candidates(targets: Sequence[str], top: int = 20, prefixes: int = 5, max_prefix: int = 8) -> list[str]:
    """The ``top`` most frequent targets; the ``prefixes`` most frequent word prefixes of each length
    up to ``max_prefix`` words, each also followed by the most frequent last word (a final "." counts
    in BLEU); and the ``top`` most frequent words; without repeats (first kept)."""
    found = [t for t, _ in Counter(targets).most_common(top)]
    ends = Counter(t.split()[-1] for t in targets if t.split())
    last = ends.most_common(1)[0][0] if ends else ""
    for n in range(1, max_prefix + 1):
        heads = [p for p, _ in Counter(" ".join(t.split()[:n]) for t in targets if len(t.split()) > n).most_common(prefixes)]
        found += [x for p in heads for x in (p, f"{p} {last}")]  # "Return a list of the" and "... the ."
    found += [w for w, _ in Counter(w for t in targets for w in t.split()).most_common(top)]
    return list(dict.fromkeys(c for c in found if c.strip()))


def best_constant(task, train: Sequence, valid: Sequence, test: Sequence) -> dict:
    """The constant output with the best validation score (primary metric), scored on ``test``."""
    key = task.primary_metric
    best, best_score = None, float("-inf")
    for c in constant_candidates([e.target for e in train]):
        score = task.metrics([c] * len(valid), list(valid))[key]
        if score > best_score:
            best, best_score = c, score
    return {"prediction": best, "valid_" + key: best_score, **_scored(task, [best] * len(test), test)}


def majority(task, train: Sequence, test: Sequence) -> dict:
    """The most frequent training label (the lowest index on a tie), predicted for every test row."""
    counts = Counter(e.label for e in train)
    label = min(counts, key=lambda lab: (-counts[lab], lab))
    word = task.choices()[label]
    return {"prediction": word, **_scored(task, [word] * len(test), test)}


def nearest_neighbour(task, train: Sequence, test: Sequence, fallback: str) -> dict:
    """Each test row answered with the target of its BM25-nearest training row (``fallback`` when no
    training row shares a term with it)."""
    hits = retrieve([e.source for e in train], [e.source for e in test])
    preds = [train[i].target if i >= 0 else fallback for i in hits]
    return {"index": "bm25", "no_match": hits.count(-1), **_scored(task, preds, test)}


def _scored(task, preds: list, test: Sequence) -> dict:
    """The task's metrics of a floor's predictions, and (under ``rows``) their per-row statistics."""
    from peftlab.evaluate.rows import checked

    metrics = task.metrics(preds, list(test))
    row_stats = getattr(task, "row_stats", None)
    if row_stats is None:  # a duck-typed task without them: no intervals
        return metrics
    kept = checked(row_stats(preds, list(test)), metrics)
    return {**metrics, ROWS: {k: r.to_json() for k, r in kept.items()}}


def floors(task, train: Sequence, valid: Sequence, test: Sequence) -> dict:
    """``{floor name: {metrics...}}`` for one task: ``constant`` + ``retrieval`` for generation,
    ``majority`` + ``retrieval`` for classification; ``metric`` names the primary metric."""
    if not train or not test:
        raise ValueError("floors need training and test examples")
    if task.kind == "classification":
        first = majority(task, train, test)
    else:
        first = best_constant(task, train, valid or train, test)
    name = "majority" if task.kind == "classification" else "constant"
    return {"metric": task.primary_metric, name: first,
            "retrieval": nearest_neighbour(task, train, test, fallback=first["prediction"])}


ROWS = "rows"  # a floor's per-row statistics, kept in the cache, handed out apart from its metrics


def task_floors(tasks: Sequence, train_rows, valid_rows, test_rows, cache: bool = True,
                rows: dict | None = None) -> dict[str, dict]:
    """Floors of every task of a run, keyed by ``task.describe()``; rows are ``(task index, Example)``.
    ``cache``: read and keep them under ``PEFTLAB_CACHE/floors/`` (see the module docstring). ``rows``:
    filled with each task's floors' per-row statistics (``{task: {floor: {metric: json}}}``)."""
    def mine(rows, t):
        return [e for i, e in rows if i == t]

    out = {}
    for t, task in enumerate(tasks):
        splits = mine(train_rows, t), mine(valid_rows, t), mine(test_rows, t)
        if not splits[2]:
            continue
        path = _cache_path(task, splits) if cache else None
        found = _read(path) if path is not None else None
        stale = hasattr(task, "row_stats") and any(isinstance(f, dict) and ROWS not in f for f in (found or {}).values())
        if found is None or stale:  # a floor cached before it kept its rows is made again
            found = floors(task, *splits)
            if path is not None:
                _write(path, found)
        if rows is not None:
            rows[task.describe()] = {n: f[ROWS] for n, f in found.items() if isinstance(f, dict) and ROWS in f}
        out[task.describe()] = {n: ({k: v for k, v in f.items() if k != ROWS} if isinstance(f, dict) else f)
                                for n, f in found.items()}
    return out


def _cache_path(task, splits):
    """``PEFTLAB_CACHE/floors/<sha256>.json`` for these rows and this task; None when the task's
    config cannot be written down (then nothing is cached)."""
    import dataclasses
    import hashlib
    import inspect
    import json
    import sys

    from peftlab.data.pysource import cache_root
    from peftlab.provenance import installed_version
    from peftlab.evaluate import metrics

    try:
        config = json.dumps(dataclasses.asdict(task), sort_keys=True, default=str)
        code = [inspect.getsource(m) for m in (sys.modules[__name__], metrics, inspect.getmodule(type(task)))]
    except (TypeError, OSError):
        return None
    key = hashlib.sha256()
    versions = [str(installed_version(d)) for d in ("bm25s", "sacrebleu", "rouge-score")]
    for part in (type(task).__qualname__, config, *code, *versions):
        key.update(part.encode())
        key.update(b"\0")
    for rows in splits:
        key.update(json.dumps([(e.source, e.target, e.label) for e in rows]).encode())
        key.update(b"\0")
    return cache_root() / "floors" / f"{key.hexdigest()}.json"


def _read(path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write(path, value: dict) -> None:
    """Atomically (a temporary file per process, renamed): concurrent runs of a bench may write it."""
    import json
    import os

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a read-only cache costs time, never the run
        pass


def beats(task_metrics: dict, task_floor: dict) -> bool:
    """Whether a method's primary metric is above every floor's."""
    key = task_floor["metric"]
    return all(task_metrics[key] > f[key] for name, f in task_floor.items() if isinstance(f, dict))
