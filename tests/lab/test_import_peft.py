"""``peftlab import-peft``: an HF peft adapter (LoRA, IA3, prompt tuning) becomes a finished peftlab run
whose model computes what peft's does, that ``peftlab eval`` re-scores; adapters a method has no
form for are refused by name, before anything is written."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import build_llama, build_t5, tiny_tokenizer_dir
from tiny_runs import make_data

peft = pytest.importorskip("peft")

pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Position ids are not supported:UserWarning")]

SCORE = ["--set", "eval.max_examples=3", "--set", "eval.max_new_tokens=3", "--set", "data.max_eval_examples=4",
         "--set", "data.max_source_length=48", "--set", "data.max_target_length=8", "--quiet"]


def _base(tmp_path, build, name):
    """A tiny random base saved as a model directory with a tokenizer (what peft names as its base)."""
    from transformers import AutoTokenizer

    path = tmp_path / name
    build().save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir()).save_pretrained(path)
    return path


def _adapter(tmp_path, base_dir, auto, config):
    """A peft adapter on ``base_dir`` with every adapter tensor moved off its init, saved."""
    base = auto.from_pretrained(base_dir)
    model = peft.get_peft_model(base, config)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    out = tmp_path / "adapter"
    model.save_pretrained(out)
    return out, model.eval()


def _logits(model, seq2seq):
    x = torch.tensor([[5, 6, 7, 8, 1]])
    with torch.no_grad():
        if seq2seq:
            return model(input_ids=x, decoder_input_ids=torch.tensor([[0, 9, 10]])).logits
        return model(input_ids=x).logits[:, -5:]


@pytest.mark.parametrize("kind", ["lora-t5", "ia3-t5", "prompt-llama"])
def test_an_imported_adapter_computes_what_peft_computes_and_is_a_finished_run(tmp_path, capsys, kind):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from peftlab.lab.cli import main
    from peftlab.lab.run import load_trained

    seq2seq = kind.endswith("t5")
    base_dir = _base(tmp_path, build_t5 if seq2seq else build_llama, "base")
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    task = "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"
    config = {"lora-t5": lambda: peft.LoraConfig(task_type=task, r=4, lora_alpha=8, target_modules=["q", "v"]),
              "ia3-t5": lambda: peft.IA3Config(task_type=task, target_modules=["k", "v", "wo"], feedforward_modules=["wo"]),
              "prompt-llama": lambda: peft.PromptTuningConfig(task_type=task, num_virtual_tokens=3)}[kind]()
    adapter, theirs = _adapter(tmp_path, base_dir, auto, config)
    run = tmp_path / "run"
    data = make_data(tmp_path / "data")
    assert main(["import-peft", str(adapter), "--out", str(run), "--set", f"data.task.path={data}", *SCORE]) == 0
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 0 and metrics["imported_from"]["peft_type"] == config.peft_type.value
    assert metrics["trainable_params"] == sum(p.numel() for p in theirs.parameters() if p.requires_grad) or \
        kind == "prompt-llama"  # peft counts its prompt encoder's embedding table for prompt tuning
    cfg, ours = load_trained(run)
    assert cfg.train.max_steps == 0 and len(cfg.methods) == 1
    assert torch.allclose(_logits(ours.model.eval(), seq2seq), _logits(theirs, seq2seq), atol=1e-5)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0  # re-scored from its saved adapter like any finished run
    again = json.loads(capsys.readouterr().out)
    assert again["eval_examples"] == metrics["test_examples"]


@pytest.mark.parametrize("config, words", [
    (lambda: peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, target_modules=["q"], use_dora=True),
     "no peftlab method reads a peft 'LORA' adapter with use_dora"),
    (lambda: peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, target_modules=["q"], bias="all"),
     "has no form of bias='all'"),
    (lambda: peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3),
     "num_transformer_submodules: 2"),
], ids=["dora", "bias", "decoder-prompts"])
def test_what_peftlab_cannot_represent_is_refused_before_anything_is_written(tmp_path, capsys, config, words):
    from transformers import AutoModelForSeq2SeqLM

    from peftlab.lab.cli import main

    adapter, _ = _adapter(tmp_path, _base(tmp_path, build_t5, "base"), AutoModelForSeq2SeqLM, config())
    assert main(["import-peft", str(adapter), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "run").exists()


def test_not_an_adapter_and_a_taken_out_are_one_line(tmp_path, capsys):
    from peftlab.lab.cli import main

    assert main(["import-peft", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "not a peft adapter (no adapter_config.json)" in capsys.readouterr().err


def test_from_peft_inverts_to_peft_for_each_method_that_exports(tiny_t5):
    """The method-level round trip, without files: ``to_peft`` then ``from_peft`` gives the same config
    and, under peftlab's parameter names, the same tensors."""
    from peftlab.methods import apply_methods, peft_state
    from peftlab.methods.ia3 import IA3Config
    from peftlab.methods.lora import LoraConfig
    from peftlab.models.arch import family_of

    for cfg in (LoraConfig(r=2, alpha=4, targets=("q", "v")), IA3Config()):
        model = tiny_t5()
        apply_methods(model, [cfg])
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p))
        form = cfg.to_peft(model, family_of(model))
        back, weights = type(cfg).from_peft(copy.deepcopy(form[0]), form[1], family_of(model))
        params = dict(model.named_parameters())
        assert set(weights) == set(peft_state(model).trainable_names())
        assert all(torch.equal(params[n].detach(), t) for n, t in weights.items())
        fresh = tiny_t5()
        apply_methods(fresh, [back])  # the imported config selects exactly the same layers
        assert set(peft_state(fresh).trainable_names()) == set(weights)
