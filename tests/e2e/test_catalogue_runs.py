"""The catalogue end to end through ``peftlab train`` on the tiny random decoder of
``configs/smoke-llama.yaml``: AdaLoRA under LoRA+ (the loop's step hook and per-group rates) exported
to peft; PiSSA reloaded and merged into a plain transformers model."""

import json
from pathlib import Path

import pytest
import torch

from peftlab.lab.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke-llama.yaml")
ARGS = ["train.log_every=1", "train.batch_size=4", "data.max_train_examples=32", "data.max_eval_examples=4",
        "eval.max_examples=2", "eval.max_new_tokens=4", "data.max_source_length=64", "data.max_target_length=16",
        "train.mixed_precision=no", "train.max_steps=5"]

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def _logits(model):
    ids = torch.arange(5, 29).reshape(2, 12)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adalora_with_loraplus_trains_prunes_and_loads_in_peft(tmp_path):
    from peft import PeftModel

    from peftlab.lab.run import base_model_record, load_run_config, load_trained
    from peftlab.models.loading import load_model

    run = tmp_path / "adalora"
    args = [*ARGS, "train.loraplus_ratio=4", "methods=[{name: adalora, r: 4, target_r: 2, targets: [q, v], tfinal: 1}]"]
    assert main(["train", SMOKE, "--out", str(run), "--quiet", *args]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 5
    _, trained = load_trained(run)
    kept = [int((p != 0).sum()) for n, p in trained.model.named_parameters() if n.endswith("lora_e")]
    assert sum(kept) == 2 * len(kept)  # the budget fell to target_r per layer at step T - tfinal
    assert main(["export", str(run), "--out", str(tmp_path / "peft")]) == 0
    cfg = load_run_config(run)
    base = load_model(cfg.model, seed=base_model_record(cfg)["seed"]).model
    theirs = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    torch.testing.assert_close(_logits(theirs), _logits(trained.model.eval()), atol=1e-5, rtol=0)


def test_pissa_run_reloads_and_merges_into_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from peftlab.lab.run import load_trained

    run = tmp_path / "pissa"
    assert main(["train", SMOKE, "--out", str(run), "--quiet", *ARGS,
                 "methods=[{name: lora, r: 4, init: pissa, targets: [q, v]}]"]) == 0
    _, trained = load_trained(run)
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(_logits(merged), _logits(trained.model.eval()), atol=1e-5, rtol=0)
