"""Floors (best constant chosen on valid, majority class, BM25 retrieval), decoding chosen on the
validation split, and the floor rows of `peftlab compare`'s table; all by hand on small cases."""

from __future__ import annotations

import pytest

from peftlab.lab.compare import BELOW_FLOOR, floor_rows, markdown_table
from peftlab.lab.floors import (beats, best_constant, constant_candidates, floors, majority, nearest_neighbour,
                                     retrieve, task_floors, terms)
from peftlab.evaluate.generate import Decoding
from peftlab.evaluate.select import decoding_grid, select_decoding
from peftlab.tasks.base import Example


class ExactTask:
    """A generation task scored by exact match only (what a floor sees of a task)."""

    kind, primary_metric = "generation", "em"

    def describe(self):
        return "exact"

    def metrics(self, predictions, examples):
        return {"em": 100.0 * sum(p == e.target for p, e in zip(predictions, examples)) / len(examples)}


class LabelTask(ExactTask):
    kind, primary_metric = "classification", "accuracy"

    def describe(self):
        return "labels"

    def choices(self):
        return ["no", "yes"]

    def metrics(self, predictions, examples):
        return {"accuracy": 100.0 * sum(p == e.target for p, e in zip(predictions, examples)) / len(examples)}


def ex(source, target, label=None):
    return Example(source, target, {}, label)


def test_terms_split_identifiers():
    assert terms("def getValue(self, max_len):") == ["def", "getvalue", "get", "value", "self", "max_len", "max", "len"]


def test_constant_candidates():
    targets = ["Return the value .", "Return the key .", "Return the value .", "Open a file ."]
    c = constant_candidates(targets)
    assert c[:3] == ["Return the value .", "Return the key .", "Open a file ."]  # by frequency
    assert "Return the" in c and "Return the ." in c and "Return" in c and "." in c  # prefixes (+ last word), words
    assert len(c) == len(set(c))


def test_best_constant_is_chosen_on_valid_and_scored_on_test():
    train = [ex("", "a")] * 3 + [ex("", "b")] * 2
    valid = [ex("", "b"), ex("", "b"), ex("", "a")]
    test = [ex("", "a")] * 3 + [ex("", "b")]
    f = best_constant(ExactTask(), train, valid, test)
    assert f["prediction"] == "b" and f["valid_em"] == pytest.approx(200 / 3)  # "a" would score 75 on test
    assert f["em"] == 25.0


def test_majority_and_retrieval_floors_by_hand():
    train = [ex("open the file and read it", "no", 0), ex("parse json text", "yes", 1),
             ex("read bytes from a socket", "no", 0)]
    test = [ex("json text to parse", "yes", 1), ex("zzz qqq", "yes", 1), ex("socket bytes", "no", 0)]
    assert majority(LabelTask(), train, test) == {"prediction": "no", "accuracy": pytest.approx(100 / 3)}
    assert retrieve([e.source for e in train], [e.source for e in test]) == [1, -1, 2]  # no shared term: -1
    nn = nearest_neighbour(LabelTask(), train, test, fallback="no")
    assert nn["no_match"] == 1 and nn["accuracy"] == pytest.approx(200 / 3)  # yes, (fallback) no, no
    f = floors(LabelTask(), train, [], test)
    assert set(f) == {"metric", "majority", "retrieval"} and f["metric"] == "accuracy"
    assert beats({"accuracy": 70.0}, f) and not beats({"accuracy": 60.0}, f)
    assert not beats({"accuracy": 100 * 2 / 3}, f)  # equal is not better
    per_task = task_floors([ExactTask(), LabelTask()], [(1, e) for e in train], [], [(1, e) for e in test])
    assert list(per_task) == ["labels"] and per_task["labels"]["metric"] == "accuracy"  # task 1's rows only


def test_generation_floors_without_valid_rows_choose_on_train():
    train = [ex("x y", "a"), ex("x y", "a"), ex("z", "b")]
    f = floors(ExactTask(), train, [], [ex("z w", "b")])
    assert f["constant"]["prediction"] == "a" and f["constant"]["em"] == 0.0 and f["retrieval"]["em"] == 100.0


def test_decoding_grid_and_selection():
    grid = decoding_grid(Decoding(max_new_tokens=9), {"num_beams": [1, 4], "no_repeat_ngram_size": [0, 3]})
    assert [(d.num_beams, d.no_repeat_ngram_size) for d in grid] == [(1, 0), (1, 3), (4, 0), (4, 3)]
    assert all(d.max_new_tokens == 9 for d in grid)
    scores = {(1, 0): 10.0, (1, 3): 12.0, (4, 0): 12.0, (4, 3): 11.0}
    best, table = select_decoding(ExactTask(), Decoding(), {"num_beams": [1, 4], "no_repeat_ngram_size": [0, 3]},
                                  lambda d: {"em": scores[(d.num_beams, d.no_repeat_ngram_size)]})
    assert (best.num_beams, best.no_repeat_ngram_size) == (1, 3)  # a tie goes to the earlier (cheaper) setting
    assert table[1] == {"num_beams": 1, "no_repeat_ngram_size": 3, "valid_em": 12.0} and len(table) == 4


def test_select_config_errors():
    from peftlab.config import from_dict
    from peftlab.errors import ConfigError
    from peftlab.schema import RunConfig

    assert from_dict(RunConfig, {"eval": {"select": {"num_beams": [1, 4]}}}).eval.select == {"num_beams": [1, 4]}
    for bad, msg in (({"num_beam": [1]}, "cannot select 'num_beam'"), ({"num_beams": [2.5]}, "not an integer"),
                     ({"num_beams": []}, "non-empty list"), ({"num_beams": [0]}, "out of range")):
        with pytest.raises(ConfigError, match=f"eval.select: .*{msg}"):
            from_dict(RunConfig, {"eval": {"select": bad}})


def test_compare_table_has_floor_rows_and_marks_methods_below_them():
    floors_ = {"code2doc": {"metric": "rouge_l", "constant": {"prediction": "Return the .", "rouge_l": 20.0, "bleu": 1.0},
                            "retrieval": {"index": "bm25", "no_match": 0, "rouge_l": 15.0, "bleu": 2.0}}}
    rows = [{"method": "good", "trainable_params": 10, "rouge_l": 25.0, "bleu": 3.0, "floors": floors_,
             "beats_floors": {"code2doc": True}},
            {"method": "weak", "trainable_params": 10, "rouge_l": 18.0, "bleu": 3.0, "floors": floors_,
             "beats_floors": {"code2doc": False}}]
    fl = floor_rows(rows)
    assert [r["method"] for r in fl] == ['floor: best constant "Return the ."', "floor: BM25 retrieval"]  # once each
    table = markdown_table(rows + fl)
    assert "| good | 10 | – | 3.00 | 25.00 | yes |" in table and f"| weak | 10 | – | 3.00 | 18.00 | no{BELOW_FLOOR} |" in table
    assert '| floor: best constant "Return the ." | – | – | 1.00 | 20.00 | – |' in table
    assert "Accuracy" not in table and "ROUGE-L" in table  # only the metrics the rows have
    assert "†: does not beat every floor on rouge_l" in table


def test_task_floors_are_kept_and_keyed_on_the_rows(tmp_path, monkeypatch):
    """Every method and seed of a bench scores the same rows: floors are computed once, kept under
    PEFTLAB_CACHE/floors, and recomputed when a row (or the task's config) differs."""
    import peftlab.lab.floors as fl
    from peftlab.tasks import get_task

    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    task = get_task("method_name")()
    train = [(0, ex(f"def _(x): return x + {i}", name)) for i, name in enumerate(["add_one", "add_two", "parse"] * 3)]
    valid = [(0, ex("def _(y): return y + 1", "add_one"))]
    test = [(0, ex("def _(z): return z + 2", "add_two")), (0, ex("def _(s): return s.split()", "parse"))]
    first = task_floors([task], train, valid, test)
    assert len(list((tmp_path / "floors").glob("*.json"))) == 1

    def computed(*a, **k):
        raise AssertionError("computed again")

    monkeypatch.setattr(fl, "floors", computed)
    assert task_floors([task], train, valid, test) == first  # read back, equal
    with pytest.raises(AssertionError, match="computed again"):  # another row: another key
        task_floors([task], train, valid, [test[0], (0, ex("def _(s): return s.split()", "split_words"))])
    with pytest.raises(AssertionError, match="computed again"):  # another task config: another key
        task_floors([get_task("method_name")(path="/elsewhere")], train, valid, test)
    with pytest.raises(AssertionError, match="computed again"):  # cache off: always computed
        task_floors([task], train, valid, test, cache=False)
