"""Instruction data: dolly and Alpaca files (JSONL, Alpaca's JSON list), Alpaca's templates, split
handling, the instruction set built from Python sources (deterministic, split by file hash, never in
pretraining), loss on the response only, and a few-step run on tiny LLaMA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftlab.config import from_dict
from peftlab.data.instruct import KINDS, build_instruct, instruction_of, read_instruction_file
from peftlab.errors import ConfigError, DataError
from peftlab.tasks import TaskConfig
from peftlab.tasks.instruction import ALPACA_INPUT, ALPACA_NO_INPUT, InstructionTask

ROOT = Path(__file__).resolve().parents[2]
SRCTREE = ROOT / "tests" / "fixtures" / "srctree"
SPREAD = {"train": 50, "valid": 30, "test": 20}  # spreads the fixture tree over all three splits

DOLLY = [
    {"instruction": "Name a primary colour.", "context": "", "response": "Red.", "category": "open_qa"},
    {"instruction": "Summarize the text.", "context": "Python is a language. It is popular.",
     "response": "Python is a popular language.", "category": "summarization"},
]
ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hello.", "input": "", "output": "Hello!"},
]


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dolly_and_alpaca_files_read_the_same_way(tmp_path):
    dolly = read_instruction_file(_write_jsonl(tmp_path / "d.jsonl", DOLLY))
    assert [(r.instruction, r.input, r.response, r.category) for r in dolly] == \
        [(d["instruction"], d["context"], d["response"], d["category"]) for d in DOLLY]
    (tmp_path / "a.json").write_text(json.dumps(ALPACA))  # alpaca_data.json: one JSON list
    for path in (_write_jsonl(tmp_path / "a.jsonl", ALPACA), tmp_path / "a.json"):
        rows = read_instruction_file(path)
        assert [(r.instruction, r.input, r.response) for r in rows] == [tuple(a.values()) for a in ALPACA]
        assert [r.line for r in rows] == [1, 2]


def test_alpaca_templates_with_and_without_input():
    task = InstructionTask(path="x.jsonl")
    with_input = task.render("Add the numbers.", "2 and 3")
    assert with_input == ALPACA_INPUT.format(instruction="Add the numbers.", input="2 and 3")
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert "### Input:\n2 and 3\n\n### Response:\n" in with_input
    assert task.render("Say hello.", "  ") == ALPACA_NO_INPUT.format(instruction="Say hello.")
    assert task.prompt_tail == "\n\n### Response:\n"
    custom = InstructionTask(path="x", template="Q: {instruction} ({input})\nA:", template_no_input="Q: {instruction}\nA:")
    assert custom.render("why", "ctx") == "Q: why (ctx)\nA:" and custom.prompt_tail == "\nA:"


@pytest.mark.parametrize("data, match", [
    ({"name": "instruction", "template": "{instruction} {context}"}, "template must use"),
    ({"name": "instruction", "template_no_input": "{instruction} {input}"}, "template_no_input must use"),
    ({"name": "instruction", "template": "{instruction"}, "template is malformed"),
    ({"name": "instruction", "split_percent": [90, 5]}, "split_percent"),
    ({"name": "instruction", "format": "sharegpt"}, "format"),
    ({"name": "instruction", "categories": "open_qa"}, "categories"),
])
def test_config_errors_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(TaskConfig, data)


@pytest.mark.parametrize("rows, match", [
    (["[1, 2]"], r"d.jsonl:1: expected a JSON object"),
    (['{"instruction": "x"}'], r"d.jsonl:1: neither dolly's 'response' nor Alpaca's 'output'"),
    (['{"response": "x"}'], r"d.jsonl:1: missing field 'instruction' of the dolly format"),
    (['{"instruction": "x", "response": 3}'], r"field 'response' must be a string"),
    (["{oops"], r"d.jsonl:1: not valid JSON"),
    ([], r"no examples"),
])
def test_bad_records_name_file_line_and_field(tmp_path, rows, match):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(r + "\n" for r in rows))
    with pytest.raises(DataError, match=match):
        read_instruction_file(path)


def test_a_single_file_splits_deterministically_by_ratio(tmp_path):
    rows = [{"instruction": f"Task {i}.", "context": "", "response": f"Answer {i}.", "category": "c" + str(i % 2)}
            for i in range(400)]
    path = _write_jsonl(tmp_path / "all.jsonl", rows)
    task = InstructionTask(path=str(path), split_percent=(60, 20, 20))
    splits = {s: [e.target for e in task.examples(s)] for s in ("train", "valid", "test")}
    assert sorted(sum(splits.values(), [])) == sorted(r["response"] for r in rows)  # a partition
    assert 200 < len(splits["train"]) < 280 and 50 < len(splits["test"]) < 110
    shuffled = _write_jsonl(tmp_path / "shuffled.jsonl", rows[::-1])  # order does not matter
    assert sorted(e.target for e in InstructionTask(path=str(shuffled), split_percent=(60, 20, 20)).examples("test")) \
        == sorted(splits["test"])
    only = InstructionTask(path=str(path), categories=("c1",)).examples("train")
    assert only and all(e.meta["category"] == "c1" for e in only)
    with pytest.raises(DataError, match="split 'train' is empty"):
        InstructionTask(path=str(path), categories=("nope",)).examples("train")


def test_a_directory_of_split_files_is_read_as_is(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", DOLLY)
    (tmp_path / "validation.json").write_text(json.dumps(ALPACA))
    task = InstructionTask(path=str(tmp_path))
    assert [e.target for e in task.examples("train")] == ["Red.", "Python is a popular language."]
    assert [e.target for e in task.examples("valid")] == ["5", "Hello!"]
    with pytest.raises(DataError, match="no test split"):
        task.examples("test")


# ------------------------------------------------------------------------------------------------
# The instruction set built from Python sources
# ------------------------------------------------------------------------------------------------
def test_built_set_is_deterministic_split_by_file_and_never_in_pretraining(tmp_path):
    from peftlab.pretrain.corpus import build_corpus

    first = build_instruct([SRCTREE], tmp_path / "a", percent=SPREAD)
    second = build_instruct([str(SRCTREE)], tmp_path / "b", percent=SPREAD)
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first["counts"] == second["counts"] and all(first["counts"].values())
    files = {s: {f["sha256"] for f in first["files"][s]} for s in ("train", "valid", "test")}
    paths = {s: {json.loads(x)["path"] for x in (tmp_path / "a" / f"{s}.jsonl").read_text().splitlines()}
             for s in files}
    assert not (paths["train"] & paths["valid"] or paths["train"] & paths["test"] or paths["valid"] & paths["test"])
    pretraining = set(build_corpus([SRCTREE], percent=SPREAD).digests)
    assert pretraining and not pretraining & (files["valid"] | files["test"])
    rows = [json.loads(x) for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    assert all(set(r) >= {"instruction", "context", "response", "category"} for r in rows)
    # the same reader (dolly's format) serves the built set
    task = InstructionTask(path=str(tmp_path / "a"))
    assert len(task.examples("test")) == first["counts"]["test"]


def test_each_kind_of_instruction_is_right_and_the_mix_is_even():
    from peftlab.data.code2doc import extract_functions

    source = '''
def clamp_value(x, low, high):
    """Clamp x into the closed interval from low to high."""
    if x < low:  # below
        return low
    return high if x > high else clamp_value(x, x, x)
'''
    seen = {}
    for i in range(300):  # the kind is a hash of (file digest, qualified name)
        (record,) = extract_functions(source, "m.py", digest=f"{i:064x}")
        row = instruction_of(record)
        seen.setdefault(row["category"], row)
    assert set(seen) == set(KINDS)
    doc, impl, name = seen["document"], seen["implement"], seen["name"]
    assert doc["response"] == "Clamp x into the closed interval from low to high."
    assert "def clamp_value" in doc["context"] and '"""' not in doc["context"] and "# below" not in doc["context"]
    assert impl["instruction"] == "Write the Python function `clamp_value` that this docstring describes."
    assert impl["context"] == doc["response"] and impl["response"] == doc["context"]
    assert name["response"] == "clamp_value" and "clamp_value" not in name["context"]
    assert name["context"].startswith("def _(x, low, high):") and "else _(x, x, x)" in name["context"]
    counts = {k: 0 for k in KINDS}
    for i in range(900):
        (record,) = extract_functions(source, "m.py", digest=f"{i:064x}")
        counts[instruction_of(record)["category"]] += 1
    assert all(250 < v < 350 for v in counts.values()), counts


def test_cli_builds_the_set(tmp_path, capsys):
    from peftlab.lab.cli import main

    assert main(["data", "instruct", str(SRCTREE), "--out", str(tmp_path / "ins"), "--percent", "50,30,20"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sum(out[s] for s in ("train", "valid", "test")) > 0 and (tmp_path / "ins" / "manifest.json").is_file()


# ------------------------------------------------------------------------------------------------
# Loss on the response only, and a run
# ------------------------------------------------------------------------------------------------
def test_loss_masks_the_prompt_and_scores_the_response(tmp_path):
    from transformers import AutoTokenizer

    from peftlab.lab.rundata import encode_rows, load_examples
    from peftlab.schema import DataSpec

    tok = AutoTokenizer.from_pretrained(ROOT / "models" / "mini-llama")
    _write_jsonl(tmp_path / "train.jsonl", DOLLY + ALPACA)
    data = DataSpec(task=InstructionTask(path=str(tmp_path)), max_source_length=128, max_target_length=32)
    rows = load_examples(data, "train", None, causal=True)
    enc = encode_rows(tok, data, rows, causal=True)
    for ids, labels, (_, ex) in zip(enc.input_ids, enc.labels, rows):
        prompt = tok(ex.source, add_special_tokens=False)["input_ids"]
        response = tok(ex.target, add_special_tokens=False)["input_ids"]
        assert labels[: 1 + len(prompt)] == [-100] * (1 + len(prompt))  # BOS + prompt: no loss
        assert labels[1 + len(prompt):] == response + [tok.eos_token_id] == ids[1 + len(prompt):]


def test_a_few_steps_on_tiny_llama(tmp_path):
    from peftlab.config import load_config
    from peftlab.lab.run import train_run
    from peftlab.schema import RunConfig

    rows = [{"instruction": f"What is {i} plus {i}?", "context": "", "response": f"{2 * i}",
             "category": "math"} for i in range(120)]
    path = _write_jsonl(tmp_path / "math.jsonl", rows)
    cfg = load_config(RunConfig, ROOT / "configs" / "smoke-llama.yaml", [
        f"data.task={{name: instruction, path: {path}}}", "train.max_steps=3", "data.max_eval_examples=4",
        "eval.max_examples=4", "eval.max_new_tokens=4", "data.max_source_length=96", "data.max_target_length=8"])
    m = train_run(cfg, tmp_path / "run", progress=False)
    assert m["task"] == "instruction" and m["steps"] == 3 and m["eval_loss"] > 0
    assert {"rouge_l", "bleu", "codexglue_bleu", "exact_match"} <= set(m)
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(p["category"] == "math" for p in preds)

    from peftlab.lab.cli import main
    from peftlab.lab.finished import generate_one

    # --instruction renders the run's template: the same text as a --prompt written out in full
    args = dict(decoding={"max_new_tokens": 4})
    assert generate_one(tmp_path / "run", instruction="What is 3 plus 3?", **args) == \
        generate_one(tmp_path / "run", prompt=cfg.data.task.render("What is 3 plus 3?"), **args)
    assert main(["generate", str(tmp_path / "run"), "--instruction", "Add.", "--input", "2 and 2",
                 "--max-new-tokens", "3"]) == 0
