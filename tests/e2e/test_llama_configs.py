"""configs/mini-llama and configs/papers/seed000-llama: the code->doc method rows on mini-llama. Each is
its mini-t5 twin (configs/mini-t5, configs/papers/seed000) with the model swapped, so the two tables are at
equal data, budget and evaluation; each applies to a (shrunk, random) mini-llama and trains a step."""

from pathlib import Path

import pytest
import torch

from peftlab.config import load_config
from peftlab.schema import RunConfig

ROOT = Path(__file__).resolve().parents[2]
TWINS = {"mini-llama": "mini-t5", "papers/seed000-llama": "papers/seed000"}
PATHS = [p for d in TWINS for p in sorted((ROOT / "configs" / d).glob("*.yaml"))]
SHRUNK = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
          "num_key_value_heads": 2}


@pytest.mark.parametrize("path", PATHS, ids=[f"{p.parent.name}/{p.stem}" for p in PATHS])
def test_llama_row_matches_its_t5_twin_and_trains(path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from peftlab.methods import apply_methods

    cfg = load_config(RunConfig, path)
    assert cfg.model.name == "mini-llama"
    twin = ROOT / "configs" / TWINS[str(path.parent.relative_to(ROOT / "configs"))] / path.name
    if twin.exists():
        t5 = load_config(RunConfig, twin)
        assert (cfg.methods, cfg.data, cfg.train, cfg.eval) == (t5.methods, t5.data, t5.train, t5.eval)
    config = AutoConfig.from_pretrained(ROOT / "models" / "mini-llama")
    config.update(SHRUNK)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    state = apply_methods(model, cfg.methods)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if cfg.methods[0].name == "zero_shot":
        assert not trainable
        return
    assert state.trainable_params(model) > 0
    ids = torch.randint(3, config.vocab_size, (2, 12))
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
