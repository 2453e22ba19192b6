"""CLI smoke tests: train a few steps, check every file and metric field, re-score, generate,
and make bad input fail with one clear message (exit status 2)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab.lab.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
FAST = ["train.max_steps=4", "train.log_every=2", "data.max_train_examples=64", "data.max_eval_examples=8",
        "eval.max_examples=6", "eval.max_new_tokens=8", "data.max_source_length=96"]
METRIC_FIELDS = {
    "method", "trainable_params", "total_params", "trainable_pct", "bleu", "codexglue_bleu", "rouge_l",
    "train_seconds", "tokens_per_second", "peak_memory_bytes", "steps", "final_loss",
    "trainable_params_by_method", "eval_loss", "device", "versions",
    "mixed_precision", "precision", "cpu_capability", "native_bf16",  # what was asked, what ran, on what
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    assert main(["train", str(SMOKE), "--out", str(out), "--quiet", *FAST]) == 0
    return out


def test_train_writes_a_complete_run(smoke_run):
    files = {p.name for p in smoke_run.iterdir()}
    assert {"config.yaml", "status.json", "metrics.json", "train_log.jsonl", "predictions.jsonl", "adapter"} <= files
    assert json.loads((smoke_run / "status.json").read_text())["state"] == "complete"
    m = json.loads((smoke_run / "metrics.json").read_text())
    assert METRIC_FIELDS <= set(m)
    assert m["steps"] == 4 and m["stopped_by"] == "max_steps"
    from peftlab.device import resolve_precision

    assert m["mixed_precision"] == "auto" and m["precision"] == resolve_precision("auto", "cpu")
    assert m["trainable_params"] == sum(m["trainable_params_by_method"].values())
    assert set(m["trainable_params_by_method"]) == {"lora", "alignment"}
    assert 0 < m["trainable_pct"] < 100 and m["total_params"] > m["trainable_params"]
    assert m["final_loss"] > 0 and m["tokens_per_second"] > 0 and m["peak_memory_bytes"] > 0
    for key in ("bleu", "codexglue_bleu", "rouge_l"):
        assert 0 <= m[key] <= 100
    rows = [json.loads(line) for line in (smoke_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    assert all({"loss", "lr", "tokens_per_second", "elapsed"} <= set(r) for r in rows if "loss" in r)
    assert "eval_loss" in rows[-1]
    preds = (smoke_run / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 6 and {"prediction", "reference"} <= set(json.loads(preds[0]))
    adapter = {p.name for p in (smoke_run / "adapter").iterdir()}
    assert adapter == {"peftlab_adapter.json", "peftlab_adapter.safetensors"}


def test_adapter_holds_trainable_params_only(smoke_run):
    from safetensors.torch import load_file

    weights = load_file(smoke_run / "adapter" / "peftlab_adapter.safetensors")
    m = json.loads((smoke_run / "metrics.json").read_text())
    assert sum(t.numel() for t in weights.values()) == m["trainable_params"]
    assert all(".lora_" in k or "hyper_alignment" in k for k in weights)


def test_eval_reproduces_the_metrics(smoke_run, capsys):
    assert main(["eval", str(smoke_run)]) == 0
    again = json.loads(capsys.readouterr().out)
    m = json.loads((smoke_run / "metrics.json").read_text())
    for key in ("bleu", "codexglue_bleu", "rouge_l"):
        assert again[key] == pytest.approx(m[key], abs=1e-9)
    first = [json.loads(x)["prediction"] for x in (smoke_run / "predictions.jsonl").read_text().splitlines()]
    second = [json.loads(x)["prediction"] for x in (smoke_run / "predictions.test.eval.jsonl").read_text().splitlines()]
    assert first == second


def test_generate_documents_one_function(smoke_run, tmp_path, capsys):
    f = tmp_path / "f.py"
    f.write_text("def add(a, b):\n    # sum them\n    return a + b\n")
    assert main(["generate", str(smoke_run), "--code", str(f)]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_existing_run_dir_is_never_overwritten(smoke_run, capsys):
    before = (smoke_run / "metrics.json").read_text()
    assert main(["train", str(SMOKE), "--out", str(smoke_run), "--quiet", *FAST]) == 2
    assert "already exists (complete)" in capsys.readouterr().err
    assert (smoke_run / "metrics.json").read_text() == before


def test_failed_run_is_marked_and_not_mistaken_for_finished(tmp_path, capsys):
    out = tmp_path / "bad"
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}.jsonl").write_text("" if split == "test" else (ROOT / "tests/fixtures/codexglue_python_sample.jsonl").read_text())
    code = main(["train", str(SMOKE), "--out", str(out), "--quiet", *FAST, f"data.task.path={data}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "test.jsonl" in err and "empty" in err
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    assert main(["eval", str(out)]) == 2
    assert "not a finished run (status: failed)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.name=./no/such/model", "model path './no/such/model' does not exist"),
        ("model.name=not a model!", "neither a short name"),
        ("train.max_step=3", "did you mean 'max_steps'"),
        ("methods.0.targets=[nope]", "match no linear layer"),
        ("data.task.template='{oops}'", "override \"data.task.template='{oops}'\": data.task.template: prompt template uses unknown field {oops}"),
        ("data.path=x", "data.path moved into data.task"),
        ("data.task={name: nope}", "unknown task 'nope'"),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path, capsys, override, message):
    code = main(["train", str(SMOKE), "--out", str(tmp_path / "r"), "--quiet", *FAST, override])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("peftlab: error:") and message in err[0]


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "peftlab", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "compare" in out.stdout


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lora"
    assert main(["train", str(SMOKE), "--out", str(out), "--quiet", *FAST, "methods=[{name: lora, r: 4}]"]) == 0
    return out


def _logits(model):
    import torch

    x = torch.tensor([[5, 6, 7, 8, 1]])
    with torch.no_grad():
        return model(input_ids=x, decoder_input_ids=torch.tensor([[0, 9, 10]])).logits


def test_merge_writes_a_plain_hf_model(lora_run, tmp_path):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from peftlab.lab.run import load_trained

    assert main(["merge", str(lora_run), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged").eval()
    AutoTokenizer.from_pretrained(tmp_path / "merged")
    _, trained = load_trained(lora_run)
    assert torch.allclose(_logits(merged), _logits(trained.model.eval()), atol=1e-5)


def test_export_loads_in_peft(lora_run, tmp_path, capsys):
    import torch
    from peft import PeftModel

    from peftlab.models.loading import load_model
    from peftlab.lab.run import base_model_record, load_run_config, load_trained

    assert main(["export", str(lora_run), "--out", str(tmp_path / "peft")]) == 0
    cfg = load_run_config(lora_run)
    base = load_model(cfg.model, seed=base_model_record(cfg)["seed"]).model
    theirs = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    _, ours = load_trained(lora_run)
    assert torch.allclose(_logits(theirs), _logits(ours.model.eval()), atol=1e-5)
    assert main(["export", str(lora_run), "--out", str(tmp_path / "peft")]) == 2  # never overwrites
    assert "not empty" in capsys.readouterr().err


def test_merge_refuses_the_alignment_adapter(smoke_run, tmp_path, capsys):
    assert main(["merge", str(smoke_run), "--out", str(tmp_path / "m")]) == 2
    assert "also has alignment" in capsys.readouterr().err


def test_data_code2doc_builds_codexglue_jsonl(tmp_path, capsys):
    out = tmp_path / "c2d"
    tree = str(ROOT / "tests" / "fixtures" / "srctree")
    # four files: with the default 90,5,5 shares the test split is empty, and no run could read it (issue 35)
    assert main(["data", "code2doc", tree, "--out", str(out)]) == 2
    assert "the test split is empty (8 documented functions in 4 files" in capsys.readouterr().err
    assert not out.exists()
    assert main(["data", "code2doc", tree, "--out", str(out), "--percent", "110,-5,5"]) == 2
    assert "--percent '110,-5,5': give three whole percentages" in capsys.readouterr().err
    assert main(["data", "code2doc", tree, "--out", str(out), "--percent", "40,40,20"]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["out"] == str(out) and all(counts[s] > 0 for s in ("train", "valid", "test"))
    for split in ("train", "valid", "test"):
        lines = (out / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == counts[split]
        assert all({"code", "docstring", "docstring_tokens", "func_name"} <= set(json.loads(x)) for x in lines)
    assert main(["data", "code2doc", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")]) == 2


def test_env_prints_what_decides_speed(capsys):
    import torch

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("peftlab", "torch", "transformers", "accelerate", "peft", "bitsandbytes", "python", "os", "cpu",
                 "cpu capability", "native bf16 (cpu)", "torch threads", "cuda", "mixed_precision: auto"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert torch.__version__ in out
    assert main(["env", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"peftlab", "torch", "transformers", "accelerate", "peft", "bitsandbytes", "python", "os", "device", "cpu",
            "cpu_capability", "native_bf16_cpu", "torch_threads", "cuda", "gpus", "auto_precision"} <= set(rep)
    assert rep["auto_precision"] in ("bf16", "fp16", "no") and isinstance(rep["native_bf16_cpu"], bool)


def test_env_says_when_an_optional_package_is_absent(monkeypatch, capsys):
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda d: real(d) if d != "bitsandbytes" else
                        (_ for _ in ()).throw(metadata.PackageNotFoundError(d)))
    assert main(["env"]) == 0
    assert any(line.split() == ["bitsandbytes", "not", "installed"] for line in capsys.readouterr().out.splitlines())


def test_a_refused_export_writes_nothing_and_can_be_retried(tmp_path, capsys):
    """A method peft cannot hold (Houlsby adapters) used to write the whole base model into
    --out/base before refusing, and the retry was then refused as "not empty"."""
    run = tmp_path / "houlsby"
    assert main(["train", str(SMOKE), "--out", str(run), "--quiet", *FAST, "methods=[{name: houlsby}]"]) == 0
    out = tmp_path / "export"
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert "HF peft has no form of houlsby" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert main(["merge", str(run), "--out", str(out)]) == 2  # the same directory is still free for another try
