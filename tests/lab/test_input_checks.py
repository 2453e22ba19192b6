"""Bad input a hostile user tried: what used to give silently wrong results, errors that came too
late or as tracebacks. Runs are tiny (tests/tiny_runs.py): about a second each."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftlab.lab.cli import main
from tiny_runs import ROOT, SMOKE, make_data, snapshot, status, tiny_args, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data") / "c2d")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, data):
    """A finished tiny LoRA run on a random-init base (the smoke config's model)."""
    out = tmp_path_factory.mktemp("runs") / "lora"
    assert train(out, data, "methods=[{name: lora, r: 4}]", "train.lr=0.05") == 0
    return out


def _seq2seq_logits(model):
    x = torch.tensor([[5, 6, 7, 8, 1]])
    with torch.no_grad():
        return model(input_ids=x, decoder_input_ids=torch.tensor([[0, 9, 10]])).logits


# ------------------------------------------------------------- 1: export names the base it trained on


def test_export_of_a_random_init_run_names_its_own_base(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from peftlab.lab.run import load_trained

    out = tmp_path / "peft"
    assert main(["export", str(lora_run), "--out", str(out)]) == 0
    named = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(named) == (out / "base").resolve()  # the random base, written beside the adapter
    theirs = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(named), out).eval()
    _, ours = load_trained(lora_run)
    # the same weights through two LoRA implementations: equal to float32 rounding
    assert torch.allclose(_seq2seq_logits(theirs), _seq2seq_logits(ours.model.eval()), atol=1e-5)
    card = (out / "README.md").read_text()
    assert named in card and "PeftModel.from_pretrained" in card and "dtype=torch.float32" in card


# ---------------------------------------------- 2: paths resolved at creation, data fingerprinted


def test_eval_from_another_directory_scores_the_runs_own_data(tmp_path, monkeypatch, capsys, caplog):
    made = tmp_path / "made_here"
    make_data(made / "data")
    monkeypatch.chdir(made)
    assert train(Path("run"), Path("data")) == 0  # data.path given relative to this directory
    run = made / "run"
    cfg = (run / "config.yaml").read_text()
    assert f"path: {made / 'data'}" in cfg  # config.yaml is resolved
    recorded = json.loads((run / "data.json").read_text())["splits"]
    assert set(recorded) == {"train", "valid", "test"}

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    for split in ("train", "valid", "test"):  # another 'data' directory: must not be the one scored
        (elsewhere / "data" / f"{split}.jsonl").write_text(
            json.dumps({"func_name": "f", "code": "def f():\n    return 1\n", "docstring_tokens": ["other"]}) + "\n")
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "data_changed" not in result and result["eval_examples"] == 3
    scored = [json.loads(x)["reference"] for x in (run / "predictions.test.eval.jsonl").read_text().splitlines()]
    trained = [json.loads(x)["reference"] for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert scored == trained

    # the run's data changed since: eval says so, and keeps the predictions of the data it saw
    before = (run / "predictions.test.eval.jsonl").read_bytes()
    test_file = made / "data" / "test.jsonl"
    test_file.write_text(test_file.read_text().replace('"docstring_tokens": [', '"docstring_tokens": ["changed", ', 1))
    assert main(["eval", str(run)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "not the data this run recorded" in result["data_changed"] and "test" in result["data_changed"]
    assert "not the data this run recorded" in caplog.text
    assert (run / "predictions.test.eval.jsonl").read_bytes() == before
    assert len(list(run.glob("predictions.test.eval.*.jsonl"))) == 1


# ------------------------------------------------------------------- 3: damaged adapter files


def _nan_fill(path: Path, value: float = float("nan")) -> None:
    """Overwrite every tensor's bytes with float32 ``value``, leaving the safetensors header intact."""
    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    raw[start:] = struct.pack("<f", value) * ((len(raw) - start) // 4)
    path.write_bytes(bytes(raw))


def _without_sha(run: Path) -> None:  # an adapter saved before the SHA-256 was recorded
    m = run / "adapter" / "peftlab_adapter.json"
    manifest = json.loads(m.read_text())
    del manifest["sha256"]
    m.write_text(json.dumps(manifest))


def _reshaped(run: Path) -> None:
    from safetensors.torch import load_file, save_file

    w = run / "adapter" / "peftlab_adapter.safetensors"
    tensors = load_file(w)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].reshape(-1)
    save_file(tensors, w)


@pytest.mark.parametrize("damage, words", [
    (lambda run: _nan_fill(run / "adapter" / "peftlab_adapter.safetensors"), "NaN/inf"),
    (lambda run: _nan_fill(run / "adapter" / "peftlab_adapter.safetensors", 0.5), "SHA-256 differs"),
    (lambda run: (_nan_fill(run / "adapter" / "peftlab_adapter.safetensors"), _without_sha(run)), "NaN/inf"),
    (lambda run: (run / "adapter" / "peftlab_adapter.safetensors").write_bytes(
        (run / "adapter" / "peftlab_adapter.safetensors").read_bytes()[:-100]), "does not read back"),
    (lambda run: (_reshaped(run), _without_sha(run)), "recorded"),
], ids=["nan", "overwritten", "nan-older-adapter", "truncated", "reshaped"])
def test_a_damaged_adapter_is_refused_naming_the_file(lora_run, tmp_path, capsys, damage, words):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(lora_run, run)
    damage(run)
    for command in (["eval", str(run)], ["export", str(run), "--out", str(tmp_path / "x")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "peftlab_adapter.safetensors: damaged file" in err[0] and words in err[0], err
    assert not (run / "predictions.test.eval.jsonl").exists()  # nothing was scored


def test_a_damaged_checkpoint_is_set_aside_and_the_one_before_used(tmp_path, data, caplog):
    from peftlab.train.checkpoint import list_checkpoints, set_aside_damaged

    run = tmp_path / "r"
    assert train(run, data, "train.max_steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=3") == 0
    root = run / "checkpoints"
    newest = list_checkpoints(root)[-1]
    _nan_fill(newest / "optimizer.safetensors")
    kept = set_aside_damaged(root)
    assert [p.name for p in kept] == ["step-00000002"] and (root / "damaged-step-00000004").is_dir()
    assert "optimizer.safetensors: damaged file" in caplog.text


# ------------------------------------------------------------- 6: generate takes one Python function


@pytest.mark.parametrize("content, words", [
    (b"", "empty"),
    (b"\n   \n", "empty"),
    (b"This is prose, not code: it explains things.\n", "not Python"),
    (b"x = 1\nprint(x)\n", "holds no function"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text file"),
], ids=["empty", "blank", "prose", "no-def", "binary"])
def test_generate_refuses_what_is_not_a_python_function(lora_run, tmp_path, capsys, content, words):
    f = tmp_path / "input.py"
    f.write_bytes(content)
    assert main(["generate", str(lora_run), "--code", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(f) in err[0] and words in err[0], err


def test_generate_documents_each_function_or_the_one_named(lora_run, tmp_path, capsys):
    f = tmp_path / "two.py"
    f.write_text("def add(a, b):\n    return a + b\n\n\nclass Box:\n    def size(self):\n        return 3\n")
    assert main(["generate", str(lora_run), "--code", str(f)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("add: ") and lines[1].startswith("Box.size: ")
    assert main(["generate", str(lora_run), "--code", str(f), "--func-name", "size"]) == 0
    only = capsys.readouterr().out.splitlines()
    assert len(only) == 1 and not only[0].startswith("Box.size: ")
    assert main(["generate", str(lora_run), "--code", str(f), "--func-name", "nope"]) == 2
    assert "no function named 'nope' (it has: add, Box.size)" in capsys.readouterr().err


# ------------------------------------------------------------------ 8: splits first, scoring apart


@pytest.mark.parametrize("broken", ["empty", "missing"])
def test_a_bad_test_split_fails_before_training(tmp_path, capsys, broken):
    data = make_data(tmp_path / "d")
    if broken == "empty":
        (data / "test.jsonl").write_text("")
    else:
        (data / "test.jsonl").unlink()
    run = tmp_path / "r"
    assert train(run, data) == 2
    err = capsys.readouterr().err
    assert "test" in err and ("empty" in err or "no such file" in err)
    assert status(run)["state"] == "failed"
    assert not (run / "train_log.jsonl").exists() and not (run / "adapter").exists()  # no training was wasted


def test_a_failure_in_scoring_keeps_the_adapter_and_the_run_resumable(tmp_path, data, monkeypatch, capsys):
    import peftlab.lab.scoring

    real_score = peftlab.lab.scoring.score

    def broken(*a, **k):
        raise RuntimeError("scoring broke")

    run = tmp_path / "r"
    monkeypatch.setattr(peftlab.lab.scoring, "score", broken)
    with pytest.raises(RuntimeError, match="scoring broke"):
        train(run, data)
    monkeypatch.setattr(peftlab.lab.scoring, "score", real_score)
    st = status(run)
    assert st["state"] == "failed" and "scoring broke" in st["error"]
    assert (run / "adapter" / "peftlab_adapter.safetensors").is_file() and (run / "trained.json").is_file()
    log_before = (run / "train_log.jsonl").read_text()

    assert main(["eval", str(run)]) == 0  # evaluable as it is
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # resumable: scoring only, no retraining
    m = json.loads((run / "metrics.json").read_text())
    assert status(run)["state"] == "complete" and m["steps"] == 2 and m["final_loss"] is not None
    assert (run / "train_log.jsonl").read_text() == log_before


# ------------------------------------------------------------------ 9: one line, not a traceback


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Local model directories: one good, and the ways one goes wrong."""
    import shutil

    from transformers import T5Config, T5ForConditionalGeneration

    root = tmp_path_factory.mktemp("models")
    cfg = T5Config(vocab_size=8192, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(cfg).save_pretrained(root / "good")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "models" / "mini-t5" / f, root / "good" / f)
    for name in ("unknown_type", "truncated", "pickled"):
        shutil.copytree(root / "good", root / name)
    c = json.loads((root / "unknown_type" / "config.json").read_text())
    (root / "unknown_type" / "config.json").write_text(json.dumps(dict(c, model_type="nosuchtype")))
    w = root / "truncated" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])

    class Payload:  # a pickle that runs code when loaded: torch.load(weights_only=True) refuses it
        def __reduce__(self):
            return (print, ("owned",))

    (root / "pickled" / "model.safetensors").unlink()
    torch.save({"x": Payload()}, root / "pickled" / "pytorch_model.bin")
    return root


@pytest.mark.parametrize("name, words", [
    ("unknown_type", "a local directory: ValueError: The checkpoint you are trying to load has model type `nosuchtype`"),
    ("truncated", "damaged weights file (model.safetensors)"),
    ("pickled", "pickled weights (.bin) hold more than tensors, which torch refuses to load"),
])
def test_a_broken_local_model_is_one_line(model_dirs, tmp_path, data, capsys, name, words):
    code = train(tmp_path / "r", data, f"model.name={model_dirs / name}", "model.init=pretrained", "model.config={}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("peftlab: error:") and words in err[0], err
    assert "hub said" not in err[0]


def test_out_pointing_at_a_file_is_one_line(lora_run, tmp_path, data, capsys):
    f = tmp_path / "a_file"
    f.write_text("keep me")
    commands = [
        ["train", SMOKE, "--out", str(f), "--quiet", *tiny_args(data)],
        ["compare", SMOKE, "--out", str(f), "--quiet"],
        ["export", str(lora_run), "--out", str(f)],
        ["merge", str(lora_run), "--out", str(f)],
        ["train", SMOKE, "--out", str(f / "below"), "--quiet", *tiny_args(data)],
        ["data", "code2doc", str(ROOT / "tests" / "fixtures" / "srctree"), "--out", str(f), "--percent", "40,40,20"],
        ["pretrain", str(ROOT / "configs" / "pretrain" / "mini-t5-v1.yaml"), "--out", str(f), "--quiet"],
    ]
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("is a file, not a directory" in err[0] or "cannot create" in err[0]), (command, err)
    assert f.read_text() == "keep me"


def test_eval_max_examples_must_be_positive(lora_run, capsys):
    for n in ("0", "-3"):
        assert main(["eval", str(lora_run), "--max-examples", n]) == 2
        assert f"--max-examples: must be >= 1, got {n}" in capsys.readouterr().err


# ------------------------------------------------------------------------- 10: an unreachable hub

_HUB_SCRIPT = r"""
import json, sys, time
import transformers, huggingface_hub  # imported before the clock starts: only the hub is timed
from peftlab.errors import ModelError
from peftlab.models.loading import load_model
from peftlab.schema import ModelSpec
out = {}
t = time.perf_counter()
try:
    load_model(ModelSpec(name="peftlab-test/not-cached"))
except ModelError as e:
    out["unreachable"] = [time.perf_counter() - t, str(e)]
out["cached"] = type(load_model(ModelSpec(name="peftlab-test/cached")).model).__name__
import huggingface_hub.constants as c
c.HF_HUB_OFFLINE = True
try:
    load_model(ModelSpec(name="peftlab-test/not-cached"))
except ModelError as e:
    out["offline"] = str(e)
print(json.dumps(out))
"""


def test_an_unreachable_hub_fails_fast_with_one_message(model_dirs, tmp_path):
    import shutil

    cache = tmp_path / "hub"
    commit = "0" * 40
    snap = cache / "models--peftlab-test--cached" / "snapshots" / commit
    shutil.copytree(model_dirs / "good", snap)
    (cache / "models--peftlab-test--cached" / "refs").mkdir()
    (cache / "models--peftlab-test--cached" / "refs" / "main").write_text(commit)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-c", _HUB_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    seconds, message = out["unreachable"]
    assert seconds < 10, seconds  # huggingface_hub alone retries for ~25 s
    assert "the hub (http://127.0.0.1:9) cannot be reached" in message and "HF_HUB_OFFLINE=1" in message
    assert out["cached"] == "T5ForConditionalGeneration"  # unreachable, but cached: the cache is used...
    assert proc.stderr.count("cannot be reached") == 1  # ...saying so once
    assert "HF_HUB_OFFLINE is set and it is not in the local cache" in out["offline"]


# ------------------------------------------------------ 12: the README's peft recipe, verbatim


def test_the_readme_peft_recipe_gives_peftlabs_outputs(tmp_path, data):
    """README: ``peftlab export runs/x --out x-peft`` then ``PeftModel.from_pretrained(base, "x-peft")``
    with ``base = AutoModelForSeq2SeqLM.from_pretrained(<base_model_name_or_path>)``, nothing more."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from peftlab.lab.run import load_trained

    run = tmp_path / "x"
    assert main(["train", SMOKE, "--out", str(run), "--quiet", *tiny_args(data), "model={name: mini-t5}",
                 "methods=[{name: lora, r: 4}]", "train.max_steps=1", "train.lr=0.05", "eval.max_examples=1",
                 "eval.max_new_tokens=1"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "x-peft")]) == 0
    name = json.loads((tmp_path / "x-peft" / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForSeq2SeqLM.from_pretrained(name)
    model = PeftModel.from_pretrained(base, tmp_path / "x-peft").eval()
    assert next(base.parameters()).dtype == torch.float32
    _, ours = load_trained(run)
    # float32 on both sides: equal to rounding (a bf16 base differed by ~0.1 here)
    assert torch.allclose(_seq2seq_logits(model), _seq2seq_logits(ours.model.eval()), atol=1e-4)


# ------------------------------------------------------- what makes scores mean less than they seem (35)


def test_train_test_overlap_is_said_and_recorded(lora_run, caplog):
    """The tiny data holds the same five functions in every split: every test input is a train input."""
    warnings = json.loads((lora_run / "data.json").read_text())["warnings"]
    assert warnings == ["code2doc: 3 of 3 test inputs (100.0%) are also train inputs: their scores measure "
                        "memory, not generalisation"]


def test_a_single_class_split_is_said(tmp_path, caplog):
    rows = {"train": [("good film", "pos"), ("bad film", "neg")] * 3, "valid": [("fine film", "pos"), ("poor", "neg")],
            "test": [("great film", "pos"), ("lovely film", "pos")]}
    root = tmp_path / "sst"
    root.mkdir()
    for split, pairs in rows.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in pairs))
    caplog.set_level("WARNING")
    assert main(["train", SMOKE, "--out", str(tmp_path / "r"), "--quiet", *tiny_args(root),
                 "data.task={name: classify, path: " + str(root) + "}", "methods=[{name: lora, r: 2}]"]) == 0
    said = "every test example has the label 'pos': a constant answer scores accuracy and F1 100"
    assert said in caplog.text
    assert any(said in w for w in json.loads((tmp_path / "r" / "data.json").read_text())["warnings"])


def test_generate_says_when_a_prompt_is_cut(lora_run, capsys, caplog):
    caplog.set_level("WARNING")
    assert main(["generate", str(lora_run), "--prompt", "def f(x): return x " * 5]) == 0
    assert "longer than" not in caplog.text
    assert main(["generate", str(lora_run), "--prompt", "def f(x): return x " * 100]) == 0
    assert ("one of 1 inputs longer than the run's data.max_source_length (64 tokens, the longest" in caplog.text
            and "only its first 64 tokens kept" in caplog.text)
