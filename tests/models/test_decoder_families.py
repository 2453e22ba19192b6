"""Every decoder layout peftlab has a table for builds from a tiny config in this transformers,
takes LoRA, trains (the loss falls) and generates through peftlab's batched, left-padded path with
the KV cache exactly as one prompt at a time. The contract rows (identity, counts, save -> load,
merge) for the same models are in ``tests/methods/test_contract.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peftlab.methods import apply_methods
from peftlab.methods.lora import LoraConfig
from peftlab.models.arch import family_of

from conftest import DECODER_TYPES, build_decoder

ROOT = Path(__file__).resolve().parents[2]
TYPES = ("llama", *DECODER_TYPES, "gpt2")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ROOT / "models" / "mini-llama")


def _model(model_type, tok):
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id)
    return build_decoder(model_type, **ids)


@pytest.mark.parametrize("model_type", TYPES)
def test_lora_trains_and_generates(model_type, tokenizer):
    from peftlab.data.seq2seq import collate, prompt_ids
    from peftlab.evaluate.generate import Decoding, generate_ids

    model = _model(model_type, tokenizer)
    assert family_of(model).kind == "causal"
    targets = ("c_attn",) if model_type == "gpt2" else ("q", "v")
    apply_methods(model, [LoraConfig(r=4, alpha=8, targets=targets)])
    texts = ["def f(x):\n    return x + 1\n", "import os", "class A:\n    pass\n\n\ndef g():"]
    ids, _, _ = prompt_ids(tokenizer, texts, 64, causal=True)
    batch = collate(ids, ids, tokenizer.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(4):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach().item())
    assert losses[-1] < losses[0]
    model.eval()
    dec = Decoding(max_new_tokens=5)
    together = generate_ids(model, tokenizer, ids, dec, batch_size=3)
    alone = [generate_ids(model, tokenizer, [i], dec, batch_size=1)[0] for i in ids]
    assert together == alone
