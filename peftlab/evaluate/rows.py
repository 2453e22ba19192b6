"""Per-row sufficient statistics of the metrics: what intervals and paired tests resample.

Every metric a task reports is a function of statistics summed over its rows: a mean of per-row
scores (accuracy, CodeXGLUE BLEU, ROUGE, edit similarity, exact match) is ``(sum of scores, count)``;
corpus BLEU is sacrebleu's clipped n-gram counts and lengths; macro-F1 and a class's F1 are per-class
true positives, false positives and false negatives; method names' sub-token precision, recall and
F1 are micro counts. So the metric on any resample of rows is a weighted sum of an ``(n, k)`` array
and one ``reduce`` (``RowStats.score``). A statistic is stored by its *kind* (``KINDS``): the kind
names the reduce, so a report can rebuild the metric from a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


def _mean(s: np.ndarray) -> np.ndarray:
    return s[..., 0] / np.maximum(s[..., 1], 1e-12)


def _bleu(s: np.ndarray) -> np.ndarray:
    from sacrebleu.metrics import BLEU

    flat = s.reshape(-1, s.shape[-1])
    out = [BLEU.compute_bleu([int(c) for c in row[:4]], [int(t) for t in row[4:8]], int(row[8]), int(row[9]),
                             smooth_method="exp").score for row in flat]
    return np.asarray(out).reshape(s.shape[:-1])


def _per_class_f1(s: np.ndarray) -> np.ndarray:
    n = s.shape[-1] // 3
    tp, fp, fn = s[..., :n], s[..., n:2 * n], s[..., 2 * n:]
    return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12), 0.0)


def _macro_f1(s: np.ndarray) -> np.ndarray:
    return 100 * _per_class_f1(s).mean(-1)


def _class1_f1(s: np.ndarray) -> np.ndarray:
    return 100 * _per_class_f1(s)[..., 1]


def _micro(which: str) -> Callable[[np.ndarray], np.ndarray]:
    def reduce(s: np.ndarray) -> np.ndarray:
        tp, fp, fn = s[..., 0], s[..., 1], s[..., 2]
        p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-12), 0.0)
        r = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1e-12), 0.0)
        f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
        return 100 * {"precision": p, "recall": r, "f1": f}[which]

    return reduce


KINDS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": _mean, "corpus_bleu": _bleu, "macro_f1": _macro_f1, "class1_f1": _class1_f1,
    "micro_precision": _micro("precision"), "micro_recall": _micro("recall"), "micro_f1": _micro("f1"),
}


@dataclass(frozen=True)
class RowStats:
    """One seed's per-row statistics of one metric, and the kind that turns their sum into the metric."""

    stats: np.ndarray  # (n rows, k)
    kind: str  # a key of KINDS

    def score(self, weights: np.ndarray | None = None) -> np.ndarray:
        """The metric on all rows, or on each row-weighting in ``weights`` (R, n) (bootstrap counts)."""
        summed = self.stats.sum(0) if weights is None else weights @ self.stats
        return KINDS[self.kind](summed)

    def to_json(self) -> dict:
        return {"kind": self.kind, "stats": np.round(self.stats, 6).tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "RowStats":
        if data.get("kind") not in KINDS:
            raise ValueError(f"unknown row-statistics kind {data.get('kind')!r}")
        return cls(np.asarray(data["stats"], dtype=float).reshape(len(data["stats"]), -1), data["kind"])


def mean_rows(values: Sequence[float]) -> RowStats:
    v = np.asarray(values, dtype=float)
    return RowStats(np.stack([v, np.ones_like(v)], axis=1), "mean")


def corpus_bleu_rows(predictions: Sequence[str], references: Sequence[str]) -> RowStats:
    """sacrebleu's corpus BLEU (defaults, texts made one-line as ``corpus_bleu`` makes them)."""
    from sacrebleu.metrics import BLEU

    from peftlab.evaluate.metrics import one_line

    bleu, rows = BLEU(), []
    for p, r in zip(predictions, references):
        s = bleu.corpus_score([one_line(p)], [[one_line(r)]])
        rows.append(list(s.counts) + list(s.totals) + [s.sys_len, s.ref_len])
    return RowStats(np.asarray(rows, dtype=float).reshape(len(rows), 10), "corpus_bleu")


def classification_rows(predicted: Sequence[int], gold: Sequence[int], n_labels: int) -> dict[str, RowStats]:
    """``accuracy``, ``macro_f1`` and ``f1`` (class 1's for two classes, else macro) as
    ``classification_metrics`` computes them (a prediction of -1 is wrong for every class)."""
    predicted, gold = np.asarray(predicted), np.asarray(gold)
    eye = np.eye(n_labels)
    right = (predicted == gold)[:, None]
    tp = eye[gold] * right
    fp = eye[np.clip(predicted, 0, n_labels - 1)] * ((~right[:, 0]) & (predicted >= 0))[:, None]
    fn = eye[gold] * ~right
    counts = np.concatenate([tp, fp, fn], axis=1)
    out = {"accuracy": mean_rows(100.0 * right[:, 0]), "macro_f1": RowStats(counts, "macro_f1")}
    out["f1"] = RowStats(counts, "class1_f1") if n_labels == 2 else out["macro_f1"]
    return out


def micro_rows(tp: Sequence[int], fp: Sequence[int], fn: Sequence[int]) -> dict[str, RowStats]:
    """Micro-averaged ``precision``, ``recall`` and ``f1`` from per-row counts."""
    counts = np.stack([np.asarray(tp, float), np.asarray(fp, float), np.asarray(fn, float)], axis=1)
    return {k: RowStats(counts, f"micro_{k}") for k in ("precision", "recall", "f1")}


# metrics that are the mean of a per-row score: one row's metric is that row's score
MEAN_METRICS = frozenset({"accuracy", "codexglue_bleu", "rouge_l", "rouge_1", "rouge_2", "exact_match", "edit_sim"})


def by_single_rows(metrics_of: Callable[[list, list], dict], predictions: Sequence, examples: Sequence,
                   names: Sequence[str]) -> dict[str, RowStats]:
    """Row statistics of the mean metrics among ``names``, from the task's metric on each row alone,
    and of corpus BLEU from its counts."""
    out: dict[str, RowStats] = {}
    means = [n for n in names if n in MEAN_METRICS]
    if means:
        singles = [metrics_of([p], [e]) for p, e in zip(predictions, examples)]
        out.update({n: mean_rows([s[n] for s in singles]) for n in means})
    if "bleu" in names:
        out["bleu"] = corpus_bleu_rows(list(predictions), [e.target for e in examples])
    return out


def checked(rows: dict[str, RowStats], metrics: dict, tolerance: float = 1e-6) -> dict[str, RowStats]:
    """The row statistics whose metric on all rows is the task's own figure: the rest are left out
    (an interval must be of the number the table shows, or there is none)."""
    return {k: r for k, r in rows.items()
            if isinstance(metrics.get(k), (int, float)) and abs(float(r.score()) - metrics[k]) <= tolerance * max(1.0, abs(metrics[k]))}
