"""The shipped prompt-tuning / P-tuning configs run end to end (train -> eval loss -> generate ->
metrics -> eval -> peft export) on a shrunken random mini-t5: virtual tokens ride on top of
``data.max_source_length`` without breaking the run path."""

import json
from pathlib import Path

import pytest

from peftlab.lab.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHRINK = ["model.init=random", "model.config={d_model: 64, d_kv: 16, d_ff: 128, num_layers: 2, num_decoder_layers: 2, "
          "num_heads: 4}", "train.max_steps=3", "train.log_every=3", "train.batch_size=4", "eval.max_new_tokens=6",
          f"data.task.path={ROOT / 'tests/fixtures/codexglue_python_sample.jsonl'}",  # 5 functions, every split
          "data.max_source_length=64"]


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("name, method", [("prompt_tuning", "prompt_tuning"), ("p_tuning", "p_tuning")])
def test_shipped_config_runs_and_exports(name, method, tmp_path, capsys):
    import torch
    from peft import PeftModel

    from peftlab.models.loading import load_model
    from peftlab.lab.run import load_trained

    out = tmp_path / name
    config = ROOT / "configs" / "mini-t5" / f"{name}.yaml"
    assert main(["train", str(config), "--out", str(out), "--quiet", *SHRINK]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["trainable_params_by_method"]) == {method} and m["steps"] == 3
    assert m["eval_loss"] > 0 and m["final_loss"] > 0
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["codexglue_bleu"] == pytest.approx(m["codexglue_bleu"], abs=1e-9)
    assert main(["export", str(out), "--out", str(tmp_path / "peft")]) == 0
    cfg, loaded = load_trained(out)
    theirs = PeftModel.from_pretrained(load_model(cfg.model, seed=cfg.train.seed).model, tmp_path / "peft").eval()
    batch = loaded.tokenizer(["def add(a, b):\n    return a + b"], return_tensors="pt")
    dec = torch.tensor([[0, 5, 6]])
    with torch.no_grad():
        ours = loaded.model.eval()(**batch, decoder_input_ids=dec).logits
        ref = theirs(**batch, decoder_input_ids=dec).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
