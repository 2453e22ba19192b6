"""Formats users bring, each on a small fixture written here in its official layout: GLUE TSVs
(RTE, MRPC with its byte-order mark and `#1 String` columns, SST-2, headerless CoLA), SuperGLUE
JSONL (BoolQ's val.jsonl with JSON booleans, RTE), the split protocol, and seq2seq JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftlab.errors import ConfigError, DataError
from peftlab.tasks import glue
from peftlab.tasks.glue import GlueTask
from peftlab.tasks.seq2seq import Seq2SeqTask

ROOT = Path(__file__).resolve().parents[2]


def tsv(path: Path, header, rows, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_rte_from_glue_tsv_and_superglue_jsonl(tmp_path):
    rows = [(i, f"premise {i}", f"hypothesis {i}", ["entailment", "not_entailment"][i % 2]) for i in range(6)]
    tsv(tmp_path / "glue" / "train.tsv", ["index", "sentence1", "sentence2", "label"], rows)
    tsv(tmp_path / "glue" / "dev.tsv", ["index", "sentence1", "sentence2", "label"], rows[:4])
    tsv(tmp_path / "glue" / "test.tsv", ["index", "sentence1", "sentence2"], [r[:3] for r in rows])  # unlabelled
    jsonl(tmp_path / "super" / "train.jsonl", [{"premise": p, "hypothesis": h, "label": y, "idx": i} for i, p, h, y in rows])
    jsonl(tmp_path / "super" / "val.jsonl", [{"premise": p, "hypothesis": h, "label": y, "idx": i} for i, p, h, y in rows[:4]])
    for layout in ("glue", "super"):
        task = GlueTask(benchmark="rte", path=str(tmp_path / layout))
        train = task.examples("train")
        assert task.choices() == ["false", "true"] and task.describe() == "rte"
        assert [e.label for e in train] == [1, 0, 1, 0, 1, 0]  # entailment is the positive class (index 1)
        assert train[0].source == "Hypothesis: hypothesis 0\nPremise: premise 0\nIs the hypothesis true?"
        assert train[0].target == "true" and task.prompt_tail == "\nIs the hypothesis true?"
        # fewer than 10,000 training rows: dev is halved into validation and test, never the unlabelled test file
        valid, test = task.examples("valid"), task.examples("test")
        assert len(valid) == len(test) == 2
        assert sorted(e.source for e in valid + test) == sorted(e.source for e in task.examples("train")[:4])
        assert task.examples("validation") == valid and task.examples("test") == test  # fixed draw


def test_mrpc_sst2_cola_boolq_official_layouts(tmp_path):
    tsv(tmp_path / "mrpc" / "train.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        [(1, 1, 2, 'He said "yes".', "He agreed."), (0, 3, 4, "A cat.", "A dog.")], bom=True)
    tsv(tmp_path / "mrpc" / "dev.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        [(1, 5, 6, "x", "x"), (0, 7, 8, "y", "z")])
    mrpc = GlueTask(benchmark="mrpc", path=str(tmp_path / "mrpc")).examples("train")
    assert mrpc[0].source == 'Sentence 1: He said "yes".\nSentence 2: He agreed.\nDo they mean the same?'
    assert [(e.target, e.label) for e in mrpc] == [("yes", 1), ("no", 0)]  # the BOM did not hide "Quality"

    tsv(tmp_path / "sst2" / "train.tsv", ["sentence", "label"], [("a fine film ", 1), ("dull", 0)])
    tsv(tmp_path / "sst2" / "dev.tsv", ["sentence", "label"], [("great", 1), ("bad", 0)])
    sst = GlueTask(benchmark="sst2", path=str(tmp_path / "sst2"), label_words=("bad", "good"))
    assert [(e.source, e.target) for e in sst.examples("train")] == [("a fine film\nSentiment:", "good"),
                                                                      ("dull\nSentiment:", "bad")]

    tsv(tmp_path / "cola" / "train.tsv", None, [("gj04", 1, "", "The book is red."), ("gj04", 0, "*", "Book red the.")])
    tsv(tmp_path / "cola" / "dev.tsv", None, [("gj04", 1, "", "It rains."), ("gj04", 0, "*", "Rains it the.")])
    cola = GlueTask(benchmark="cola", path=str(tmp_path / "cola"))
    assert [(e.target, e.label) for e in cola.examples("train")] == [("acceptable", 1), ("unacceptable", 0)]

    rows = [{"question": "is water wet", "passage": "Water is wet.", "idx": 0, "label": True},
            {"question": "is fire cold", "passage": "Fire is hot.", "idx": 1, "label": False}]
    jsonl(tmp_path / "boolq" / "train.jsonl", rows)
    jsonl(tmp_path / "boolq" / "val.jsonl", rows)
    jsonl(tmp_path / "boolq" / "test.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in rows])
    boolq = GlueTask(benchmark="boolq", path=str(tmp_path / "boolq"))
    train = boolq.examples("train")
    assert [(e.target, e.label) for e in train] == [("yes", 1), ("no", 0)]
    assert train[0].source == "Question: is water wet?\nPassage: Water is wet.\nAnswer:"
    assert boolq.metrics(["yes", "yes"], train) == {"accuracy": 50.0, "macro_f1": pytest.approx(100 / 3),
                                                   "f1": pytest.approx(200 / 3)}


def test_large_benchmarks_keep_training_rows_aside_for_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(glue, "SMALL", 10)
    monkeypatch.setattr(glue, "VALID_FROM_TRAIN", 3)
    tsv(tmp_path / "qnli" / "train.tsv", ["index", "question", "sentence", "label"],
        [(i, f"q{i}", f"s{i}", "entailment") for i in range(12)])
    tsv(tmp_path / "qnli" / "dev.tsv", ["index", "question", "sentence", "label"],
        [(i, f"dq{i}", f"ds{i}", "not_entailment") for i in range(5)])
    task = GlueTask(benchmark="qnli", path=str(tmp_path / "qnli"))
    train, valid, test = (task.examples(s) for s in ("train", "valid", "test"))
    assert len(train) == 9 and len(valid) == 3 and len(test) == 5
    assert not {e.source for e in train} & {e.source for e in valid}
    assert all("dq" in e.source for e in test)  # the official dev set is the test split


def test_glue_errors_name_the_field_or_file(tmp_path):
    from peftlab.config import from_dict
    from peftlab.schema import RunConfig

    def cfg(task):
        return from_dict(RunConfig, {"data": {"task": {"name": "glue", **task}}})

    with pytest.raises(ConfigError, match="data.task.benchmark: expected one of"):
        cfg({"benchmark": "rtee", "path": "x"})
    with pytest.raises(ConfigError, match="data.task.path: glue needs a path"):
        cfg({"benchmark": "rte"})
    with pytest.raises(ConfigError, match="data.task.template: uses"):
        cfg({"benchmark": "sst2", "path": "x", "template": "{premise}"})
    assert cfg({"benchmark": "rte", "path": "x", "template": "{sentence1} / {sentence2}"})  # fits the GLUE layout
    with pytest.raises(DataError, match="has no mrpc files"):
        GlueTask(benchmark="mrpc", path=str(tmp_path)).examples("train")
    tsv(tmp_path / "train.tsv", ["sentence", "label"], [("a", 1)])
    with pytest.raises(DataError, match="dev.tsv: missing"):
        GlueTask(benchmark="sst2", path=str(tmp_path)).examples("test")


def test_seq2seq_jsonl(tmp_path):
    rows = [{"document": "The cat sat on the mat all day long.", "summary": "A cat sat."},
            {"document": "Rain fell in the north.", "summary": "Northern rain."}]
    for split in ("train", "validation", "test"):
        jsonl(tmp_path / "xsum" / f"{split}.jsonl", rows)
    task = Seq2SeqTask(path=str(tmp_path / "xsum"), source_field="document", target_field="summary",
                       template="summarize: {source}")
    test = task.examples("test")
    assert [(e.source, e.target) for e in test][0] == ("summarize: The cat sat on the mat all day long.", "A cat sat.")
    assert len(task.examples("valid")) == 2 and task.describe() == "xsum" and task.primary_metric == "rouge_l"
    perfect = task.metrics([e.target for e in test], test)
    assert perfect["rouge_1"] == perfect["rouge_2"] == perfect["rouge_l"] == pytest.approx(100.0)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    # ROUGE-1 by hand: "a cat" vs "a cat sat": P 2/2, R 2/3 -> F 0.8 ; the other 0
    half = task.metrics(["A cat", "sunny"], test)
    assert half["rouge_1"] == pytest.approx(40.0) and half["rouge_2"] == pytest.approx(100 * (2 * 1 * 0.5 / 1.5) / 2)
    assert Seq2SeqTask(path="x", primary="bleu").primary_metric == "bleu"
    jsonl(tmp_path / "bad" / "train.jsonl", [{"document": "x"}])
    with pytest.raises(DataError, match=r"train.jsonl:1: missing field 'summary'"):
        Seq2SeqTask(path=str(tmp_path / "bad"), source_field="document", target_field="summary").examples("train")


def test_a_glue_task_trains_on_t5(tmp_path):
    from peftlab.config import load_config
    from peftlab.lab.run import train_run
    from peftlab.schema import RunConfig

    rows = [(f"the movie was {['bad', 'good'][i % 2]} {i}", i % 2) for i in range(20)]
    tsv(tmp_path / "sst2" / "train.tsv", ["sentence", "label"], rows)
    tsv(tmp_path / "sst2" / "dev.tsv", ["sentence", "label"], rows[:8])
    cfg = load_config(RunConfig, ROOT / "configs" / "smoke.yaml",
                      ["train.max_steps=2", "eval.max_examples=4", "data.max_eval_examples=4",
                       f"data.task={{name: glue, benchmark: sst2, path: {tmp_path / 'sst2'}}}"])
    m = train_run(cfg, tmp_path / "run", progress=False)
    assert m["task"] == "sst2" and {"accuracy", "macro_f1"} <= set(m)
    assert m["floors"]["sst2"]["majority"]["prediction"] in ("negative", "positive")
