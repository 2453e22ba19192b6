"""``data.task: {name: dataset, ...}``: local Parquet / Arrow / JSONL / CSV files and ``save_to_disk``
directories (what a Hub id loads into, through the same ``datasets`` calls) as classification,
seq2seq, instruction and chat data with a column mapping; splits named or carved by content hash;
chat rendered with the tokenizer's template, the loss on the assistant turns only."""

from __future__ import annotations

import json
import re

import pytest

from peftlab.config import from_dict
from peftlab.errors import ConfigError, DataError
from peftlab.tasks import TaskConfig

datasets = pytest.importorskip("datasets")

CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def task(**fields) -> TaskConfig:
    return from_dict(TaskConfig, {"name": "dataset", **fields})


def chat_tokenizer(template: str | None = CHATML):
    """A word-level tokenizer of 128 ids (the tiny models' vocabulary) with ChatML's special tokens and
    a chat template: built here, nothing downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", "<s>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system", "hi",
             "hello", "ok", "more", "what", "is", "two", "plus", "four"]
    words += [f"w{i}" for i in range(len(words), 128)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", unk_token="<unk>",
                                   bos_token="<s>", additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                   chat_template=template)


def conversations(n: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"hi {i}"},
                          {"role": "assistant", "content": "hello"}, {"role": "user", "content": "what is two plus two"},
                          {"role": "assistant", "content": "four"}]} for i in range(n)]


def test_classification_from_a_saved_dataset_with_class_labels(tmp_path):
    features = datasets.Features({"review": datasets.Value("string"),
                                  "sentiment": datasets.ClassLabel(names=["neg", "pos"])})
    parts = {split: datasets.Dataset.from_dict({"review": [f"{split} film {i}" for i in range(6)],
                                                "sentiment": [i % 2 for i in range(6)]}, features=features)
             for split in ("train", "validation", "test")}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "imdb"))
    t = task(path=str(tmp_path / "imdb"), format="classify", columns={"text": "review", "label": "sentiment"},
             label_words=["bad", "good"])
    assert t.kind == "classification" and t.primary_metric == "accuracy" and t.choices() == ["bad", "good"]
    test = t.examples("test")
    assert [e.label for e in test] == [0, 1, 0, 1, 0, 1] and test[1].target == "good"
    assert test[0].source == "text: test film 0\nlabel:" and t.examples("valid")[0].source.startswith("text: validation")
    assert t.metrics(["good", "bad", "bad"], test[:3])["accuracy"] == pytest.approx(100 / 3)
    assert t.describe() == "imdb" and t.split_files("test")  # local files: fingerprinted


def test_a_single_parquet_file_is_carved_by_content_hash(tmp_path):
    import pandas as pd

    rows = [{"document": f"document number {i}", "summary": f"summary {i}"} for i in range(200)]
    pd.DataFrame(rows).to_parquet(tmp_path / "xsum.parquet")
    t = task(path=str(tmp_path / "xsum.parquet"), format="seq2seq", template="summarize: {source}",
             columns={"source": "document", "target": "summary"}, primary="bleu")
    splits = {s: t.examples(s) for s in ("train", "valid", "test")}
    ids = {s: {e.meta["row"] for e in rows_} for s, rows_ in splits.items()}
    assert sum(map(len, ids.values())) == 200 and not (ids["train"] & ids["valid"] or ids["train"] & ids["test"]
                                                       or ids["valid"] & ids["test"])
    assert 160 <= len(ids["train"]) <= 195 and ids == {s: {e.meta["row"] for e in t.examples(s)} for s in ids}
    e = splits["test"][0]
    assert e.source == f"summarize: document number {e.meta['row']}" and e.target == f"summary {e.meta['row']}"
    assert t.primary_metric == "bleu" and set(t.metrics([e.target], [e])) == set(t.metric_names)
    assert len(t.examples("train", limit=5)) == 5


def test_instruction_data_from_csv_finds_dolly_names_and_carves_missing_splits(tmp_path):
    import csv

    with open(tmp_path / "dolly.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["instruction", "context", "response", "category"])
        w.writeheader()
        w.writerows({"instruction": f"say {i}", "context": "" if i % 2 else f"ctx {i}", "response": f"said {i}",
                     "category": "qa"} for i in range(60))
    t = task(path=str(tmp_path / "dolly.csv"), format="instruction", split_percent=[80, 10, 10])
    rows = t.examples("train")
    with_input = next(e for e in rows if e.meta["row"] % 2 == 0)
    assert "### Input:\nctx" in with_input.source and with_input.target == f"said {with_input.meta['row']}"
    assert "### Input" not in next(e for e in rows if e.meta["row"] % 2).source
    assert with_input.meta["category"] == "qa" and t.primary_metric == "rouge_l"


def test_jsonl_and_arrow_files_read_alike(tmp_path):
    rows = [{"src": f"a {i}", "tgt": f"b {i}"} for i in range(30)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    a, b = (task(path=str(p), format="seq2seq") for p in (tmp_path / "pairs.jsonl", arrow))
    assert [(e.source, e.target) for e in a.examples("train")] == [(e.source, e.target) for e in b.examples("train")]


def test_a_hub_id_goes_to_load_dataset_with_its_subset_and_revision(monkeypatch):
    from peftlab.data import hf_datasets

    calls = []

    def fake(path, name=None, **kw):
        calls.append((path, name, kw))
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"sentence1": [f"x{i}" for i in range(20)], "sentence2": ["y"] * 20,
                                                                          "label": [0, 1] * 10}),
                                     "validation": datasets.Dataset.from_dict({"sentence1": ["v"], "sentence2": ["w"],
                                                                               "label": [1]})})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    hf_datasets._load.cache_clear()
    t = task(path="nyu-mll/glue", subset="rte", revision="main", format="classify",
             columns={"premise": "sentence1", "hypothesis": "sentence2", "label": "label"},
             template="{premise} Question: {hypothesis}", splits={"test": "validation"}, split_percent=[90, 10, 0])
    assert t.resolved("/somewhere").path == "nyu-mll/glue"  # a Hub id is not a relative path
    assert [e.source for e in t.examples("test")] == ["v Question: w"]
    valid = t.examples("valid")  # carved from train, not the split test reads again
    assert valid and all(e.source.startswith("x") for e in valid) and len(valid) < 20
    assert calls[0] == ("nyu-mll/glue", "rte", {"revision": "main"}) and t.split_files("test") == []
    hf_datasets._load.cache_clear()


@pytest.mark.parametrize("fields, words", [
    ({"format": "seq2seq", "columns": {"text": "x"}}, "seq2seq has no field 'text'"),
    ({"format": "chat", "template": "{source}"}, "chat data has no template"),
    ({"format": "seq2seq", "template": "{document}"}, "template uses ['document']"),
    ({"format": "classify", "primary": "bleu"}, "classify reports accuracy, macro_f1, f1; not 'bleu'"),
    ({"format": "seq2seq", "splits": {"validation": "dev"}}, "peftlab's splits are train, valid and test"),
])
def test_config_mistakes_are_named_when_the_config_loads(fields, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        task(path="x.jsonl", **fields)


def test_a_missing_column_names_the_columns_there_are(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"question": "q", "answer": "a"}) + "\n" for _ in range(20)))
    with pytest.raises(DataError, match=r"no column 'source' for seq2seq's 'source'; its columns: question, answer "
                                        r"\(map one: columns: \{source: COLUMN\}\)"):
        task(path=str(tmp_path / "d.jsonl"), format="seq2seq").examples("train")


# ------------------------------------------------------------------------------------------- chat


def test_chat_is_rendered_with_the_template_and_trained_on_assistant_turns_only(tmp_path):
    from peftlab.data.chat import encode_segments

    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in conversations(20)))
    t = task(path=str(tmp_path / "chat.jsonl"), format="chat", split_percent=[100, 0, 0])
    tok = chat_tokenizer()
    plain = t.examples("train")[0]
    assert plain.target == "four" and plain.source.endswith("user: what is two plus two\nassistant:")  # T5's
    e = t.render_for_tokenizer(t.render_for_decoder(plain), tok)
    served = tok.apply_chat_template(list(plain.messages[:-1]), tokenize=False, add_generation_prompt=True)
    assert e.source == served[len("<s>"):] and e.target == "four"  # the encoding puts BOS first itself
    enc = encode_segments(tok, [e.segments], 200)
    ids, labels = enc.input_ids[0], enc.labels[0]
    full = tok.apply_chat_template(list(plain.messages), tokenize=False)
    assert ids[0] == tok.bos_token_id and ids == tok(full, add_special_tokens=False)["input_ids"]  # as served
    trained = [tok.convert_ids_to_tokens(i) for i, lab in zip(ids, labels) if lab != -100]
    assert trained == ["hello", "<|im_end|>", "four", "<|im_end|>"]  # both replies and their end marks, nothing else
    assert all(lab in (-100, i) for i, lab in zip(ids, labels))
    cut = encode_segments(tok, [e.segments], 16)  # the first reply survives the cut: kept, counted
    assert cut.truncated_sources == 1 and len(cut.input_ids[0]) == 16 and cut.labels[0][-3:-1] == ids[13:15]
    assert len(encode_segments(tok, [e.segments], 6).input_ids) == 0  # no reply left: left out


def test_sharegpt_turns_and_plain_rendering_without_a_template(tmp_path):
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    (tmp_path / "sg.jsonl").write_text((json.dumps(row) + "\n") * 20)  # identical rows: one split has them all
    t = task(path=str(tmp_path / "sg.jsonl"), format="chat", split_percent=[100, 0, 0])
    e = t.examples("train")[0]
    assert e.messages == ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    decoder = t.render_for_tokenizer(t.render_for_decoder(e), chat_tokenizer(None))  # no template: plain lines
    assert decoder.source == "user: hi\nassistant:" and decoder.segments == (("user: hi\nassistant:", False),
                                                                           (" hello\n", True))
    strict = task(path=str(tmp_path / "sg.jsonl"), format="chat", chat="template", split_percent=[100, 0, 0])
    with pytest.raises(DataError, match="the tokenizer has no chat template"):
        strict.render_for_tokenizer(e, chat_tokenizer(None))
    own = task(path=str(tmp_path / "sg.jsonl"), format="chat", chat_template=CHATML, split_percent=[100, 0, 0])
    assert own.render_for_tokenizer(e, chat_tokenizer(None)).source == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_conversation_must_end_with_the_assistant(tmp_path):
    row = {"messages": [{"role": "user", "content": "hi"}]}
    (tmp_path / "c.jsonl").write_text((json.dumps(row) + "\n") * 20)
    with pytest.raises(DataError, match=r"row 0: the last turn is 'user'"):
        task(path=str(tmp_path / "c.jsonl"), format="chat", split_percent=[100, 0, 0]).examples("train")


def test_a_decoder_trains_and_is_scored_on_chat_data(tmp_path):
    """The whole run on a tiny LLaMA whose tokenizer has a chat template: trains on the templated
    conversations, scores the replies from the served prompt."""
    from conftest import build_llama

    from peftlab.lab.cli import main

    model = tmp_path / "chat-llama"
    build_llama().save_pretrained(model)
    chat_tokenizer().save_pretrained(model)
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in conversations(40)))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {{name: {model}}}\nmethods: [{{name: lora, r: 2}}]\n"
                   f"data: {{task: {{name: dataset, path: {tmp_path / 'chat.jsonl'}, format: chat, split_percent: [60, 20, 20]}}, "
                   f"max_source_length: 48, max_target_length: 16, max_eval_examples: 4}}\n"
                   f"train: {{max_steps: 2, batch_size: 4, log_every: 1, mixed_precision: 'no'}}\n"
                   f"eval: {{max_examples: 3, max_new_tokens: 3}}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["train_examples"] > 0 and "rouge_l" in metrics
    preds = [json.loads(x) for x in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == metrics["test_examples"] and all(p["reference"] == "four" for p in preds)
