"""Perplexity: exp(mean NLL) by hand when stride = window; the HF sliding-window recipe written as
plain loops when stride < window; every token scored once; the run and CLI entries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from peftlab.evaluate.perplexity import perplexity, read_texts, windows

from conftest import build_llama

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["def add(a, b):\n    return a + b\n" * 6, "import os\nprint(os.getcwd())\n", "x = 1\n" * 25]


class Tok:
    """A character-level tokenizer over a 128-token vocabulary (BOS 1, pad 0): what ``perplexity``
    needs of one, with no files."""

    bos_token_id, pad_token_id = 1, 0

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        return {"input_ids": [[2 + ord(c) % 126 for c in t] for t in texts]}


def _ids(text):
    return [Tok.bos_token_id] + Tok()([text])["input_ids"][0]


def _hf_recipe(model, ids, window, stride):
    """Hugging Face's "Perplexity of fixed-length models" loop on one text: (NLL sum, tokens)."""
    ids = torch.tensor([ids])
    seq_len, prev_end, nll, n = ids.size(1), 0, 0.0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + window, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        k = int((target_ids[:, 1:] != -100).sum())  # the loss shifts labels left by one
        nll, n = nll + float(loss) * k, n + k
        prev_end = end
        if end == seq_len:
            break
    return nll, n


@pytest.fixture(scope="module")
def model():
    return build_llama(seed=4)


def test_stride_equal_to_window_is_exp_mean_nll_by_hand(model):
    window = 16
    nll, n = 0.0, 0
    for text in TEXTS:
        ids = _ids(text)
        for start in range(0, len(ids), window):  # disjoint chunks; a chunk's first token is context only
            chunk = torch.tensor([ids[start:start + window]])
            if chunk.size(1) < 2:
                continue
            with torch.no_grad():
                logp = torch.log_softmax(model(chunk).logits[0, :-1].double(), -1)
            for t in range(1, chunk.size(1)):
                nll -= float(logp[t - 1, chunk[0, t]])
                n += 1
    out = perplexity(model, Tok(), TEXTS, window=window, stride=window, batch_size=3)
    assert out["tokens"] == n
    assert out["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)


@pytest.mark.parametrize("window, stride", [(16, 4), (24, 10), (32, 31), (512, 256)])
def test_stride_below_window_is_the_hf_recipe(model, window, stride):
    nll, n = 0.0, 0
    for text in TEXTS:
        a, b = _hf_recipe(model, _ids(text), window, stride)
        nll, n = nll + a, n + b
    out = perplexity(model, Tok(), TEXTS, window=window, stride=stride, batch_size=4)
    assert out["tokens"] == n == sum(len(_ids(t)) - 1 for t in TEXTS)  # every token but BOS, once
    assert out["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_windows_score_each_token_once():
    """stride < window: every token but the first, once; stride = window: all but each window's first."""
    for n in (1, 2, 7, 16, 17, 50):
        for window, stride in ((8, 8), (8, 3), (8, 1), (5, 4)):
            scored = [i + w_start for w_start, w in _with_starts(list(range(n)), window, stride)
                      for i in range(w.first, len(w.ids))]
            context_only = set(range(0, n, window)) if stride == window else {0}
            assert scored == [t for t in range(n) if t not in context_only], (n, window, stride)
            assert all(len(w.ids) <= window for _, w in _with_starts(list(range(n)), window, stride))


def _with_starts(ids, window, stride):
    return [(w.ids[0], w) for w in windows(ids, window, stride)]


def test_read_texts_from_file_directory_and_stdlib(tmp_path):
    (tmp_path / "a.py").write_bytes("# -*- coding: latin-1 -*-\ns = 'caf\xe9'\n".encode("latin-1"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("hello\n")
    (tmp_path / "c.json").write_text("{}")
    texts = read_texts(tmp_path)
    assert [Path(n).name for n, _ in texts] == ["a.py", "b.txt"] and "café" in texts[0][1]
    assert len(read_texts(tmp_path / "sub" / "b.txt")) == 1
    from peftlab.data.splits import split_of_file

    held_out = read_texts("stdlib")
    assert held_out and all(split_of_file(n) == "test" for n, _ in held_out)


def test_run_reports_ppl_and_eval_computes_it(tmp_path, capsys):
    from peftlab.lab.cli import main

    text = tmp_path / "held.txt"
    text.write_text("def f(x):\n    return x * 2\n" * 20)
    run = tmp_path / "run"
    args = ["train", str(ROOT / "configs" / "smoke-llama.yaml"), "--out", str(run), "--quiet", "train.max_steps=2",
            "data.max_train_examples=16", "data.max_eval_examples=4", "eval.max_examples=2", "eval.max_new_tokens=3",
            "data.max_source_length=64", "data.max_target_length=16", f"eval.perplexity={text}",
            "eval.perplexity_window=32"]
    assert main(args) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["ppl"] > 1 and m["ppl_window"] == 32 and m["ppl_stride"] == 16 and m["ppl_tokens"] > 100
    capsys.readouterr()
    assert main(["eval", str(run), "--perplexity", str(text), "--window", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ppl"] == pytest.approx(m["ppl"], rel=1e-5) and out["ppl_tokens"] == m["ppl_tokens"]
    assert main(["eval", str(run), "--window", "16", "--stride", "16"]) == 0  # the run's own path
    assert json.loads(capsys.readouterr().out)["ppl_stride"] == 16
    assert main(["eval", str(run), "--perplexity", str(text), "--window", "8", "--stride", "9"]) == 2
    assert "stride in [1, window]" in capsys.readouterr().err
    assert main(["eval", str(run), "--perplexity", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_perplexity_on_an_encoder_decoder_is_refused_before_training(tmp_path, capsys):
    from peftlab.lab.cli import main

    assert main(["train", str(ROOT / "configs" / "smoke.yaml"), "--out", str(tmp_path / "r"), "--quiet",
                 "eval.perplexity=stdlib"]) == 2
    assert "eval.perplexity: perplexity needs a causal LM" in capsys.readouterr().err
