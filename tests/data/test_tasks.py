"""The task layer: encoding for encoder-decoders and decoders, prompt truncation that keeps the
instruction, user classification files, label ranking, classification metrics, and the config."""

from __future__ import annotations

import json

import pytest
import torch

from peftlab.config import from_dict
from peftlab.data.seq2seq import BatchPlan, encode_pairs, prompt_ids
from peftlab.errors import ConfigError, DataError
from peftlab.evaluate.generate import choice_logprobs
from peftlab.evaluate.metrics import classification_metrics
from peftlab.schema import DataSpec, RunConfig
from peftlab.tasks import get_task
from peftlab.tasks.classify import ClassifyTask
from peftlab.tasks.code2doc import Code2DocTask

from conftest import build_llama, build_t5


class Tok:
    """Characters as token ids (a=10, b=11, ...); BOS 3 and EOS 1 like peftlab's tokenizer."""

    eos_token_id, bos_token_id, pad_token_id = 1, 3, 0

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        return {"input_ids": [[10 + (ord(c) - ord("a")) % 100 for c in t] for t in texts]}


def test_seq2seq_encoding_ends_sources_and_targets_with_eos():
    enc = encode_pairs(Tok(), ["ab"], ["c"], 16, 8)
    assert enc.input_ids == [[10, 11, 1]] and enc.labels == [[12, 1]]


def test_causal_encoding_is_one_sequence_with_the_loss_on_the_target_only():
    enc = encode_pairs(Tok(), ["ab", "abcd"], ["c", "de"], 16, 8, causal=True, task_ids=[0, 0])
    assert enc.input_ids[0] == [3, 10, 11, 12, 1]  # bos, prompt, target, eos
    assert enc.labels[0] == [-100, -100, -100, 12, 1]
    assert enc.labels[1] == [-100] * 5 + [13, 14, 1]
    batch = BatchPlan(enc, 2, 0, with_task_ids=True).make_batch([0, 1])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 8)
    assert batch["labels"][0, 5:].tolist() == [-100] * 3 and batch["task_ids"].tolist() == [0, 0]
    assert "task_ids" not in BatchPlan(enc, 2, 0).make_batch([0, 1])


def test_a_long_prompt_loses_its_middle_and_keeps_the_instruction():
    text = "abcdefghij" + "xyz"  # the template's tail "xyz" is the instruction
    (ids,), truncated, longest = prompt_ids(Tok(), [text], 8, keep_tail=3)
    assert truncated == 1 and longest == 14
    assert ids == [10, 11, 12, 13] + [33, 34, 35] + [1]  # head, tail, eos
    (ids,), _, _ = prompt_ids(Tok(), [text], 8, causal=True, keep_tail=3)
    assert ids == [3, 10, 11, 12, 13] + [33, 34, 35]  # bos, head, tail: no eos for a decoder prompt


def test_code2doc_prompt_tail_is_the_instruction():
    task = Code2DocTask()
    assert task.prompt_tail == "\nProvide the documentation for the following code:\n"
    assert Code2DocTask(template="{code}").prompt_tail == ""


def write_split_files(root, ending, rows_by_split):
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        path = root / f"{split}{ending}"
        if ending == ".jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            sep = "\t" if ending == ".tsv" else ","
            cols = list(rows[0])
            path.write_text(sep.join(cols) + "\n" + "".join(sep.join(str(r[c]) for c in cols) + "\n" for r in rows))
    return root


SENTIMENT = {
    "train": [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}],
    "dev": [{"text": "fine film", "label": "pos"}],
    "test": [{"text": "awful", "label": "neg"}, {"text": "great", "label": "pos"}],
}


@pytest.mark.parametrize("ending", [".jsonl", ".csv", ".tsv"])
def test_classify_reads_each_format(tmp_path, ending):
    root = write_split_files(tmp_path / "sst", ending, SENTIMENT)
    task = ClassifyTask(path=str(root), label_words=("negative", "positive"))
    assert task.choices() == ["negative", "positive"] and task.describe() == "sst"
    test = task.examples("test")
    assert [e.label for e in test] == [0, 1] and [e.target for e in test] == ["negative", "positive"]
    assert test[0].source == "text: awful\nlabel:" and task.prompt_tail == "\nlabel:"
    assert len(task.examples("valid")) == 1  # "dev" is the validation split


def test_classify_errors_name_file_line_and_field(tmp_path):
    root = write_split_files(tmp_path / "d", ".jsonl", {**SENTIMENT, "test": [{"text": "x", "label": "meh"}]})
    with pytest.raises(DataError, match=r"test.jsonl:1: label 'meh' is not one of \['neg', 'pos'\]"):
        ClassifyTask(path=str(root)).examples("test")
    with pytest.raises(DataError, match=r"train.jsonl:1: missing column 'sentence'"):
        ClassifyTask(path=str(root), text_columns=("sentence",)).examples("train")
    (root / "test.jsonl").write_text('{"text": "x", "label": "pos"}\n{oops\n')
    with pytest.raises(DataError, match=r"test.jsonl:2: not valid JSON"):
        ClassifyTask(path=str(root)).examples("test")
    with pytest.raises(DataError, match="no valid split"):
        ClassifyTask(path=str(tmp_path / "none"), labels=("a", "b")).examples("valid")


def test_classify_config_errors():
    with pytest.raises(ConfigError, match=r"data.task.template: uses \['premise'\]"):
        from_dict(RunConfig, {"data": {"task": {"name": "classify", "path": "x", "template": "{premise}"}}})
    with pytest.raises(ConfigError, match="data.task.path: classify needs a path"):
        from_dict(RunConfig, {"data": {"task": "classify"}})
    with pytest.raises(ConfigError, match="label_words"):
        from_dict(RunConfig, {"data": {"task": {"name": "classify", "path": "x", "label_words": ["Yes", "yes!"]}}})


def test_classification_metrics_by_hand():
    # gold 0 0 1 1 ; predicted 0 1 1 -1 (the last answered outside the label set)
    m = classification_metrics([0, 1, 1, -1], [0, 0, 1, 1], 2)
    assert m["accuracy"] == 50.0
    # class 0: tp 1 fp 0 fn 1 -> F1 2/3 ; class 1: tp 1 fp 1 fn 1 -> F1 1/2
    assert m["macro_f1"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert m["f1"] == pytest.approx(50.0)


def test_predict_label_normalises(tmp_path):
    task = ClassifyTask(path=str(tmp_path), labels=("0", "1"), label_words=("No", "Yes"))
    assert [task.predict_label(t) for t in ("yes.", " NO", "maybe")] == [1, 0, -1]


def test_data_task_config_forms():
    assert isinstance(from_dict(DataSpec, {}).task, Code2DocTask)
    one = from_dict(DataSpec, {"task": "code2doc"})
    assert one.tasks == (Code2DocTask(),)
    two = from_dict(DataSpec, {"task": ["code2doc", {"name": "classify", "path": "/x"}]})
    assert [t.name for t in two.tasks] == ["code2doc", "classify"]
    with pytest.raises(ConfigError, match=r"task.0.templat: unknown key 'templat' \(did you mean 'template'\?\)"):
        from_dict(DataSpec, {"task": [{"name": "code2doc", "templat": "x"}]})
    with pytest.raises(ConfigError, match=r"data.task.tempalte: unknown key"):
        from_dict(RunConfig, {"data": {"task": {"name": "code2doc", "tempalte": "x"}}})
    with pytest.raises(ConfigError, match="distinct names"):
        from_dict(DataSpec, {"task": ["code2doc", "code2doc"]})
    assert get_task("classify") is ClassifyTask


@pytest.mark.parametrize("build", [build_t5, build_llama], ids=["t5", "llama"])
def test_choice_logprobs_equal_the_models_own_loss(build):
    """Ranking scores are total log-likelihoods: -(mean loss x tokens) of the model's own loss."""
    model = build()
    tok = Tok()
    prompts = [[3, 10, 11, 12], [3, 13]] if build is build_llama else [[10, 11, 12, 1], [13, 1]]
    choices = ["ab", "c"]
    scores = choice_logprobs(model, tok, prompts, choices, batch_size=3, mixed_precision="no")
    assert scores.shape == (2, 2)
    for i, p in enumerate(prompts):
        for c, text in enumerate(choices):
            target = tok([text])["input_ids"][0] + [1]
            with torch.no_grad():
                if build is build_llama:
                    ids = torch.tensor([p + target])
                    labels = torch.tensor([[-100] * len(p) + target])
                    loss = model(input_ids=ids, labels=labels).loss
                else:
                    loss = model(input_ids=torch.tensor([p]), labels=torch.tensor([target])).loss
            assert float(scores[i, c]) == pytest.approx(-float(loss) * len(target), abs=1e-4)


def test_a_capped_split_is_the_same_sample_as_sampling_the_whole_split(tmp_path):
    """code2doc cleans only the rows it draws; the draw equals sampling every cleaned row."""
    import random

    from peftlab.data.code2doc import read_codexglue_jsonl

    src = (__import__("pathlib").Path(__file__).parents[1] / "fixtures" / "codexglue_python_sample.jsonl")
    every = read_codexglue_jsonl(src)
    for n in (1, 3, len(every), len(every) + 5):
        expected = random.Random(0).sample(every, n) if n < len(every) else every
        assert read_codexglue_jsonl(src, sample=n) == expected
