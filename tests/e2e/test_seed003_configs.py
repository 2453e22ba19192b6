"""configs/papers/seed003 (seed 003's Table 3 on mini-llama): every config loads, and its methods count the
parameters worked out by hand on mini-llama's shapes (meta device)."""

from pathlib import Path

import pytest
import torch

from peftlab.config import load_config
from peftlab.schema import RunConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "papers" / "seed003").glob("*.yaml"))

# mini-llama: d = 256, 8 layers, 8 heads (4 KV heads of 32), FFN 768, vocab 8192
D, LAYERS, HEADS, KV, FFN, VOCAB = 256, 8, 8, 128, 768, 8192
V1 = 6 * (10 * D + HEADS)  # top L = 8 - 2 layers x (K = 10 prompts of d + a gate per head)
V2 = V1 + LAYERS * 2 * (D + KV + KV + D + FFN + FFN + D) + 2 * VOCAB + (2 * LAYERS + 1) * D  # bias+scale, LM head, norms
LORA = LAYERS * 8 * ((D + D) + (D + KV))  # r = 8 on q (d -> d) and v (d -> 4 x 32)
EXPECTED = {"v1": V1, "v1_sparse": V1, "v2": V2, "v2_sparse": V2, "lora": LORA}


def test_all_five_rows_are_there_and_share_everything_but_the_methods():
    assert {p.stem for p in CONFIGS} == set(EXPECTED)
    cfgs = [load_config(RunConfig, p, ["methods=[]"]) for p in CONFIGS]  # the rest validates on any branch
    assert all(c.data == cfgs[0].data and c.train == cfgs[0].train and c.eval == cfgs[0].eval for c in cfgs)
    assert cfgs[0].eval.perplexity == "stdlib" and cfgs[0].data.task.name == "instruction"
    assert cfgs[0].data.max_source_length + cfgs[0].data.max_target_length == 512  # the seed's config 2


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_trainable_counts_on_mini_llama_shapes(path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from peftlab.methods import apply_methods

    cfg = load_config(RunConfig, path)
    config = AutoConfig.from_pretrained(ROOT / "models" / "mini-llama")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert apply_methods(model, cfg.methods).trainable_params(model) == EXPECTED[path.stem]
