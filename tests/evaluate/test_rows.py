"""Per-row statistics (peftlab.evaluate.rows): every task's metric rebuilt from its rows equals the
task's own figure, on all rows and on any resample of them."""

from __future__ import annotations

import numpy as np
import pytest

from peftlab.evaluate.rows import RowStats, checked
from peftlab.tasks import get_task
from peftlab.tasks.base import Example

PREDS = ["return the sum of a and b", "open the file", "a b c d", "compute the mean value", "x", "getUserName"]
REFS = ["return the sum of two numbers", "open a file for reading", "a b c", "compute the mean", "y z", "get_user_id"]


def _examples(task, refs):
    labels = {w: i for i, w in enumerate(task.choices() or [])}
    return [Example(source=f"src {i}", target=r, label=labels.get(r, -1)) for i, r in enumerate(refs)]


def _cases():
    from peftlab.tasks.classify import ClassifyTask
    from peftlab.tasks.doc_match import DocMatchTask
    from peftlab.tasks.exception_type import ExceptionTypeTask

    yield "code2doc", get_task("code2doc")(), PREDS, REFS
    yield "method_name", get_task("method_name")(), ["get_user_name", "open", "readLine", "x"], \
        ["get_user_id", "open_file", "read_line", "y"]
    yield "line_completion", get_task("line_completion")(), PREDS, REFS
    yield "instruction", get_task("instruction")(), PREDS, REFS
    doc = DocMatchTask()
    yield "doc_match", doc, ["yes", "no", "maybe", "yes", "no"], [doc.choices()[i] for i in (0, 1, 1, 1, 0)]
    exc = ExceptionTypeTask(num_classes=4)
    words = exc.choices()
    yield "exception_type", exc, [words[i] for i in (0, 1, 2, 2, 3, 0)] + ["nonsense"], \
        [words[i] for i in (0, 2, 2, 1, 3, 3, 1)]


@pytest.mark.parametrize("name, task, preds, refs", list(_cases()), ids=[c[0] for c in _cases()])
def test_every_metric_with_rows_is_the_tasks_own_on_any_resample(name, task, preds, refs):
    examples = _examples(task, refs)
    metrics = task.metrics(preds, examples)
    rows = task.row_stats(preds, examples)
    assert checked(rows, metrics) == rows  # every one reproduces the task's figure on all rows
    assert task.primary_metric in rows
    rng = np.random.default_rng(0)
    for _ in range(3):
        idx = rng.integers(0, len(preds), size=len(preds))
        weights = np.bincount(idx, minlength=len(preds)).astype(float)[None]
        again = task.metrics([preds[i] for i in idx], [examples[i] for i in idx])
        for metric, r in rows.items():
            assert r.score(weights)[0] == pytest.approx(again[metric], abs=1e-6), metric
    for metric, r in rows.items():  # and survive the file they are stored in
        back = RowStats.from_json(r.to_json())
        assert float(back.score()) == pytest.approx(metrics[metric], abs=1e-5)


def test_checked_drops_statistics_that_are_not_the_tables_number():
    from peftlab.evaluate.rows import mean_rows

    rows = {"accuracy": mean_rows([100.0, 0.0]), "f1": mean_rows([1.0, 1.0])}
    assert list(checked(rows, {"accuracy": 50.0, "f1": 80.0})) == ["accuracy"]
