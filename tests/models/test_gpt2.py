"""GPT-2: linears are ``Conv1D`` (weight stored in x out) and q, k, v are fused in ``c_attn``.

Parity with HF peft computed live (peft wraps Conv1D with ``fan_in_fan_out``): same A and B (or IA3
vectors) copied in, same logits (atol 1e-5), same merged weights (atol 1e-6); our export loads with
``PeftModel.from_pretrained``; a merged model is a plain ``GPT2LMHeadModel`` again; a whole run
(train, eval, generate, export, merge) on a tiny GPT-2 through the CLI.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from peftlab.errors import ModelError
from peftlab.methods import apply_methods, peft_state
from peftlab.methods.export import export_peft, merged_model
from peftlab.methods.ia3 import IA3Config, ia3_modules
from peftlab.methods.lora import LoraConfig, LoraLinear, lora_modules, merge

from conftest import build_gpt2, logits

peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning")]

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "base_model.model."


def _randomise(model, names=("lora_b", "ia3_l")):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.rsplit(".", 1)[-1] in names:
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.2 if "ia3" in n else torch.randn(p.shape, generator=g) * 0.1)


def _lora_pair(peft_targets, our_targets):
    base = build_gpt2()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=peft_targets, lora_dropout=0.0, fan_in_fan_out=True))
    apply_methods(base, [LoraConfig(r=4, alpha=8, targets=our_targets)])
    g = torch.Generator().manual_seed(3)
    copied = set()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith(".lora_B.default.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for name, p in theirs.named_parameters():
            for suffix, attr in ((".lora_A.default.weight", "lora_a"), (".lora_B.default.weight", "lora_b")):
                if name.endswith(suffix):
                    path = name[len(PREFIX): -len(suffix)]
                    getattr(base.get_submodule(path), attr).copy_(p)
                    copied.add(path)
    assert copied == {n for n, m in base.named_modules() if isinstance(m, LoraLinear)}
    return theirs, base


@pytest.mark.parametrize("peft_targets, ours", [(["c_attn"], ("c_attn",)), (["c_attn", "c_fc"], ("qkv", "ffn_in"))])
def test_lora_matches_peft_on_conv1d(peft_targets, ours, llama_batch):
    theirs, model = _lora_pair(peft_targets, ours)
    expected = logits(theirs, llama_batch)
    assert (expected - logits(build_gpt2(), llama_batch)).abs().max() > 1e-3, "B did not move the outputs"
    torch.testing.assert_close(logits(model, llama_batch), expected, atol=1e-5, rtol=0)
    assert peft_state(model).trainable_params(model) == theirs.get_nb_trainable_parameters()[0]

    merged_theirs = theirs.merge_and_unload()
    merge(model)
    params = dict(model.named_parameters())
    for name, p in merged_theirs.named_parameters():  # Conv1D weights stay (in, out), merged the same way
        torch.testing.assert_close(params[name], p, atol=1e-6, rtol=0, msg=name)
    torch.testing.assert_close(logits(model, llama_batch), logits(merged_theirs, llama_batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("targets", [("c_attn",), ("ffn_out",)], ids=["c_attn", "mlp.c_proj-only"])
def test_lora_export_loads_in_peft(tmp_path, targets, llama_batch):
    """``ffn_out`` is ``mlp.c_proj``: the export must not let peft also wrap ``attn.c_proj``."""
    from peft import PeftModel

    model = build_gpt2()
    apply_methods(model, [LoraConfig(r=4, alpha=8, targets=targets)])
    _randomise(model)
    export_peft(model, tmp_path / "peft", "tiny-gpt2")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True
    theirs = PeftModel.from_pretrained(build_gpt2(), tmp_path / "peft")
    wrapped = {n[len(PREFIX):] for n, m in theirs.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {n for n, m in model.named_modules() if isinstance(m, LoraLinear)}
    torch.testing.assert_close(logits(theirs, llama_batch), logits(model, llama_batch), atol=1e-5, rtol=0)


def test_ia3_matches_peft_and_exports(tmp_path, llama_batch):
    from peft import PeftModel

    base = build_gpt2()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.IA3Config(
        target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True))
    apply_methods(base, [IA3Config(targets=("qkv", "ffn_out"), feedforward=("ffn_out",))])
    _randomise(theirs, names=("default",))
    ours = ia3_modules(base)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith(".ia3_l.default"):
                ours[name[len(PREFIX): -len(".ia3_l.default")]].ia3_l.copy_(p.reshape(-1))
    expected = logits(theirs, llama_batch)
    torch.testing.assert_close(logits(base, llama_batch), expected, atol=1e-5, rtol=0)

    export_peft(base, tmp_path / "peft", "tiny-gpt2")
    loaded = PeftModel.from_pretrained(build_gpt2(), tmp_path / "peft")
    torch.testing.assert_close(logits(loaded, llama_batch), expected, atol=1e-5, rtol=0)

    merged_theirs = theirs.merge_and_unload()
    ours_merged = merged_model(base)
    params = dict(ours_merged.named_parameters())
    for name, p in merged_theirs.named_parameters():
        torch.testing.assert_close(params[name], p, atol=1e-6, rtol=0, msg=name)


def test_merged_model_is_a_plain_gpt2(tmp_path, llama_batch):
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    model = build_gpt2()
    apply_methods(model, [LoraConfig(r=4, targets=("all-linear",))])
    _randomise(model)
    expected = logits(model, llama_batch)
    merged = merged_model(model)
    assert not lora_modules(merged)
    assert all(type(merged.get_submodule(f"transformer.h.0.{n}")) is Conv1D
               for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    merged.save_pretrained(tmp_path / "m")
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(logits(again, llama_batch), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("targets", [("q", "v"), ("k",)])
def test_fused_roles_are_refused_naming_c_attn(targets):
    with pytest.raises(ModelError) as err:
        apply_methods(build_gpt2(), [LoraConfig(targets=targets)])
    msg = str(err.value)
    assert f"no separate {targets[0]!r} layer" in msg and "fused layer 'c_attn'" in msg
    assert "targets: [c_attn]" in msg


def test_bf16_autocast_trains_lora_on_conv1d(llama_batch):
    model = build_gpt2()
    apply_methods(model, [LoraConfig(r=4, targets=("c_attn", "c_fc"))])
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**llama_batch).loss
    loss.backward()
    grads = [m.lora_b.grad for m in lora_modules(model)]
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------------------------
# A whole run on a tiny GPT-2 (random weights, mini-llama's tokenizer)
# ------------------------------------------------------------------------------------------------
def tiny_gpt2_dir(root: Path) -> Path:
    """A GPT-2 model directory with only a config: ``init: random`` draws its weights."""
    from transformers import AutoTokenizer, GPT2Config

    tok = AutoTokenizer.from_pretrained(ROOT / "models" / "mini-llama")
    out = root / "tiny-gpt2"
    GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(out)
    return out


def test_cli_run_on_gpt2_trains_evaluates_generates_exports_and_merges(tmp_path, capsys):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    from peftlab.lab.cli import main
    from peftlab.models.loading import load_model
    from peftlab.lab.run import load_run_config, load_trained

    model_dir = tiny_gpt2_dir(tmp_path)
    run = tmp_path / "run"
    args = ["train", str(ROOT / "configs" / "smoke-llama.yaml"), "--out", str(run), "--quiet",
            f"model={{name: {model_dir}, init: random, tokenizer: mini-llama}}",
            "methods=[{name: lora, r: 4, targets: [c_attn]}]", "train.max_steps=3", "data.max_train_examples=32",
            "data.max_eval_examples=4", "eval.max_examples=3", "eval.max_new_tokens=4",
            "data.max_source_length=96", "data.max_target_length=24"]
    assert main(args) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["steps"] == 3 and m["trainable_params_by_method"] == {"lora": 2 * 4 * (64 + 3 * 64)}
    assert main(["generate", str(run), "--prompt", "def add(a, b):", "--max-new-tokens", "4"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "peft")]) == 0
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()

    _, loaded = load_trained(run)
    batch = {"input_ids": torch.randint(5, 500, (2, 10))}
    expected = logits(loaded.model.eval(), batch)  # GPT-2 has dropout 0.1
    merged = GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(merged, batch), expected, atol=1e-5, rtol=0)
    cfg = load_run_config(run)
    base = load_model(cfg.model, seed=cfg.train.seed).model  # the same random base, no adapter
    theirs = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    torch.testing.assert_close(logits(theirs, batch), expected, atol=1e-5, rtol=0)

    bad = args[:]
    bad[bad.index("methods=[{name: lora, r: 4, targets: [c_attn]}]")] = "methods=[{name: lora, targets: [q, v]}]"
    bad[bad.index(str(run))] = str(tmp_path / "bad")
    assert main(bad) == 2
    assert "target it whole with targets: [c_attn]" in capsys.readouterr().err
