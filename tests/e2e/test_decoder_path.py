"""Decoder LLMs through the whole run path: code→doc on a causal LM (prompt + target in one
sequence, loss on the target only), batched left-padded generation with KV cache, eval, generate
with decoding options, export/merge, resume, and a classification task ranked by likelihood."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftlab.lab.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke-llama.yaml"
FAST = ["train.max_steps=4", "train.log_every=2", "data.max_train_examples=64", "data.max_eval_examples=8",
        "eval.max_examples=6", "eval.max_new_tokens=6", "data.max_source_length=96", "data.max_target_length=24"]


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "llama"
    assert main(["train", str(SMOKE), "--out", str(out), "--quiet", *FAST]) == 0
    return out


def test_code2doc_trains_a_decoder(llama_run):
    m = json.loads((llama_run / "metrics.json").read_text())
    assert m["steps"] == 4 and m["task"] == "code2doc" and m["model"] == "mini-llama"
    assert {"bleu", "codexglue_bleu", "rouge_l", "eval_loss", "final_loss"} <= set(m)
    # 2 layers x (q: 64 -> 4 heads x 16, v: 64 -> 2 kv heads x 16), r = 8
    assert m["trainable_params_by_method"] == {"lora": 2 * (8 * (64 + 64) + 8 * (64 + 32))}
    rows = [json.loads(x) for x in (llama_run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(set(r) >= {"func_name", "prediction", "reference"} for r in rows)


def test_decoder_loss_is_on_the_target_only(tmp_path):
    """Changing the prompt's tokens changes the loss, but the loss is averaged over target tokens:
    its count of scored tokens equals the target's (+ EOS), never the prompt's."""
    from peftlab.config import load_config
    from peftlab.lab.run import build
    from peftlab.lab.rundata import encode_rows, load_examples
    from peftlab.schema import RunConfig

    cfg = load_config(RunConfig, SMOKE, FAST)
    loaded, _ = build(cfg)
    rows = load_examples(cfg.data, "valid", 4, causal=True)
    enc = encode_rows(loaded.tokenizer, cfg.data, rows, causal=True)
    for ids, labels, (_, ex) in zip(enc.input_ids, enc.labels, rows):
        scored = [t for t in labels if t != -100]
        target = loaded.tokenizer(ex.target, add_special_tokens=False)["input_ids"][: cfg.data.max_target_length - 1]
        assert scored == target + [loaded.tokenizer.eos_token_id]
        assert ids[0] == loaded.tokenizer.bos_token_id and ids[-len(scored):] == scored


def test_eval_and_generate_on_a_decoder_run(llama_run, capsys):
    assert main(["eval", str(llama_run), "--max-examples", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["eval_examples"] == 3 and "codexglue_bleu" in out
    assert main(["generate", str(llama_run), "--prompt", "def add(a, b):", "--max-new-tokens", "5"]) == 0
    greedy = capsys.readouterr().out
    args = ["generate", str(llama_run), "--prompt", "def add(a, b):", "--max-new-tokens", "5", "--sample",
            "--temperature", "1.5", "--top-p", "0.9", "--seed"]
    assert main(args + ["7"]) == 0
    s1 = capsys.readouterr().out
    assert main(args + ["7"]) == 0
    assert capsys.readouterr().out == s1  # seeded sampling repeats
    assert main(["generate", str(llama_run), "--prompt", "def add(a, b):", "--max-new-tokens", "5",
                 "--num-beams", "2"]) == 0
    capsys.readouterr()
    assert main(["generate", str(llama_run), "--prompt", "x", "--top-p", "0"]) == 2
    assert "--top-p: must be in (0, 1]" in capsys.readouterr().err
    assert greedy.strip()


def test_merged_lora_decodes_like_unmerged(llama_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from peftlab.data.seq2seq import prompt_ids
    from peftlab.evaluate.generate import Decoding, generate_ids
    from peftlab.lab.run import load_trained

    assert main(["merge", str(llama_run), "--out", str(tmp_path / "merged")]) == 0
    cfg, loaded = load_trained(llama_run)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids, _, _ = prompt_ids(loaded.tokenizer, ["def f(x):\n    return x + 1\n", "class A:"], 64, causal=True)
    dec = Decoding(max_new_tokens=8)
    a = generate_ids(loaded.model, loaded.tokenizer, ids, dec)
    b = generate_ids(merged, loaded.tokenizer, ids, dec)
    assert a == b


def test_batched_generation_equals_one_by_one(llama_run):
    """Left padding and the KV cache do not change what a row generates."""
    from peftlab.data.seq2seq import prompt_ids
    from peftlab.evaluate.generate import Decoding, generate_ids
    from peftlab.lab.run import load_trained

    _, loaded = load_trained(llama_run)
    texts = ["def f(x):\n    return x + 1\n", "import os", "class A:\n    pass\n\n\ndef g():"]
    ids, _, _ = prompt_ids(loaded.tokenizer, texts, 64, causal=True)
    dec = Decoding(max_new_tokens=6)
    together = generate_ids(loaded.model, loaded.tokenizer, ids, dec, batch_size=3)
    alone = [generate_ids(loaded.model, loaded.tokenizer, [i], dec, batch_size=1)[0] for i in ids]
    assert together == alone


def test_too_long_for_the_position_table_names_the_field(tmp_path, capsys):
    code = main(["train", str(SMOKE), "--out", str(tmp_path / "r"), "--quiet", *FAST,
                 "model.config.max_position_embeddings=64"])
    assert code == 2
    assert "data.max_source_length + data.max_target_length = 120 exceeds the model's max_position_embeddings (64)" \
        in capsys.readouterr().err


def test_classification_on_t5_and_llama_ranks_label_words(tmp_path):
    from peftlab.config import load_config
    from peftlab.lab.run import train_run
    from peftlab.schema import RunConfig

    data = tmp_path / "sent"
    data.mkdir()
    words = ["good", "bad"]
    for split, n in (("train", 24), ("valid", 6), ("test", 8)):
        rows = [{"text": f"this is {words[i % 2]} stuff {i}", "label": i % 2} for i in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = f"data.task={{name: classify, path: {data}, label_words: [positive, negative]}}"
    for config, name in ((ROOT / "configs" / "smoke.yaml", "t5"), (SMOKE, "llama")):
        cfg = load_config(RunConfig, config, [*FAST, task])
        m = train_run(cfg, tmp_path / name, progress=False)
        assert m["task"] == "sent" and set(m) >= {"accuracy", "macro_f1", "f1"}
        assert 0 <= m["accuracy"] <= 100
        preds = [json.loads(x)["prediction"] for x in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
        assert set(preds) <= {"positive", "negative"} and len(preds) == 6  # eval.max_examples


def test_multi_task_run_scores_each_task(tmp_path):
    from peftlab.config import load_config
    from peftlab.lab.run import train_run
    from peftlab.schema import RunConfig

    data = tmp_path / "yesno"
    data.mkdir()
    for split in ("train", "valid", "test"):
        rows = [{"text": f"item {i}", "label": ["no", "yes"][i % 2]} for i in range(6)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(RunConfig, ROOT / "configs" / "smoke.yaml",
                      [*FAST, f"data.task=[{{name: code2doc, path: stdlib}}, {{name: classify, path: {data}}}]"])
    m = train_run(cfg, tmp_path / "multi", progress=False)
    assert set(m["task_metrics"]) == {"code2doc", "yesno"} and m["task"] == "code2doc + yesno"
    assert "codexglue_bleu" in m["task_metrics"]["code2doc"] and "accuracy" in m["task_metrics"]["yesno"]
    rows = [json.loads(x) for x in (tmp_path / "multi" / "predictions.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"code2doc", "yesno"}


def test_relative_data_paths_are_resolved_when_the_run_is_created(tmp_path, monkeypatch):
    import yaml

    from peftlab.config import load_config
    from peftlab.lab.run import train_run
    from peftlab.schema import RunConfig

    data = tmp_path / "d"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}.jsonl").write_text((ROOT / "tests/fixtures/codexglue_python_sample.jsonl").read_text())
    monkeypatch.chdir(tmp_path)
    cfg = load_config(RunConfig, ROOT / "configs" / "smoke.yaml", [*FAST, "data.task.path=d"])
    train_run(cfg, tmp_path / "r", progress=False)
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["data"]["task"]["path"] == str(data.resolve())
    monkeypatch.chdir(ROOT)  # evaluating from elsewhere reads the same data
    assert main(["eval", str(tmp_path / "r"), "--max-examples", "2"]) == 0
