"""QLoRA: a bitsandbytes 4-bit (NF4) or 8-bit frozen base with full-precision LoRA on top.

bitsandbytes >= 0.49 runs on CPU, so these run here and in CI; on a GPU the same code path runs
with CUDA kernels. A tiny random T5 keeps them fast (the CPU 4-bit kernels are slow)."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes")

from peftlab.lab.cli import main  # noqa: E402
from peftlab.errors import ModelError  # noqa: E402
from peftlab.methods import apply_methods  # noqa: E402
from peftlab.methods.alignment import AlignmentConfig  # noqa: E402
from peftlab.methods.full import FullFineTuneConfig  # noqa: E402
from peftlab.methods.lora import LoraConfig, LoraLinear, is_quantized, merge  # noqa: E402
from peftlab.models.loading import load_model  # noqa: E402
from peftlab.schema import ModelSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TINY = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4}


def spec(quantize):
    return ModelSpec(name="mini-t5", init="random", config=TINY, quantize=quantize)


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(110, 8000, (2, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, :6].contiguous()}


@pytest.mark.parametrize("quantize", ["4bit", "8bit"])
def test_lora_on_a_quantized_base_is_identity_at_init_and_trains_only_the_adapter(quantize):
    base = load_model(spec(quantize), seed=0).model
    qkind = "Linear4bit" if quantize == "4bit" else "Linear8bitLt"
    assert type(base.encoder.block[0].layer[0].SelfAttention.q).__name__ == qkind
    b = batch()
    base.train()  # (dropout is 0) in eval mode bitsandbytes would switch to its CPU inference kernel
    with torch.no_grad():
        before = base(**b).logits
    state = apply_methods(base, [LoraConfig(r=4, targets=("q", "v")), AlignmentConfig()])
    wrapped = [m for m in base.modules() if isinstance(m, LoraLinear)]
    assert wrapped and all(is_quantized(m.base_layer) for m in wrapped)
    with torch.no_grad():
        assert torch.equal(base(**b).logits, before)  # B = 0 and a zero gate: the quantized base's output
    # the count is of logical weights, not of packed bytes
    full = load_model(spec("none"), seed=0).model
    assert state.total_params == sum(p.numel() for p in full.parameters()) + state.trainable_params(base)

    base.eval()
    with torch.no_grad():  # an eval pass must not leave the weights in the backward-less CPU format
        base(**b)
    trainable = [p for p in base.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(8):
        loss = base(**b).loss
        loss.backward()
        losses.append(float(loss))
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] - 0.1
    names = set(state.trainable_names())
    assert {n for n, p in base.named_parameters() if p.requires_grad} == names
    assert all(p.grad is None for n, p in base.named_parameters() if n not in names)


def test_quantized_base_refuses_merge_and_full_fine_tuning():
    base = load_model(spec("4bit"), seed=0).model
    apply_methods(base, [LoraConfig(r=4)])
    with pytest.raises(ModelError, match="re-quantizing"):
        merge(base)
    with pytest.raises(ModelError, match="cannot be trained in full"):
        apply_methods(load_model(spec("4bit"), seed=0).model, [FullFineTuneConfig()])


def test_missing_bitsandbytes_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ModelError, match=r"pip install 'peftlab\[quant\]'"):
        load_model(spec("8bit"), seed=0)


def test_qlora_run_with_gradient_checkpointing_then_merge_into_the_full_precision_base(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from peftlab.methods.io import load_adapter
    from peftlab.lab.run import base_model_record, load_run_config

    run = tmp_path / "run"
    args = ["methods=[{name: lora, r: 8, targets: [q, v]}]", "model.quantize=4bit", "train.gradient_checkpointing=true", "train.max_steps=3", "train.batch_size=4",
            "data.max_train_examples=16", "data.max_eval_examples=4", "eval.max_examples=4",
            "eval.max_new_tokens=4", "data.max_source_length=48"]
    assert main(["train", SMOKE, "--out", str(run), "--quiet", *args]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["total_params"] > metrics["trainable_params"] > 0
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged")
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    # reference: the full-precision base with the adapter, unmerged
    cfg = load_run_config(run)
    ref = load_model(dataclasses.replace(cfg.model, quantize="none"), seed=cfg.train.seed).model
    load_adapter(ref, run / "adapter", base_model_record(cfg))
    b = batch()
    with torch.no_grad():
        assert torch.allclose(merged(**b).logits, ref(**b).logits, atol=1e-4)


def test_fsdp_refuses_a_quantized_base():
    from peftlab.errors import ConfigError
    from peftlab.train.sharding import shard

    with pytest.raises(ConfigError, match="cannot shard a 4-bit/8-bit base"):
        shard(load_model(spec("4bit"), seed=0).model)
