"""Interop: LoRA exports that HF peft loads, and merged models that plain transformers loads."""

import pytest
import torch

from peftlab.errors import ModelError
from peftlab.methods import apply_methods
from peftlab.methods.alignment import AlignmentConfig
from peftlab.methods.export import export_peft, merged_model
from peftlab.methods.lora import LoraConfig


def trained_lora(build, **lora):
    model = build()
    apply_methods(model, [LoraConfig(**{"r": 4, "alpha": 8, **lora})])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_b"):
                p.normal_(std=0.05)
    return model


@pytest.mark.parametrize("family, rslora", [("t5", False), ("t5", True), ("llama", False)])
def test_peft_loads_the_export_and_matches(tmp_path, tiny_t5, tiny_llama, t5_batch, llama_batch, logits_of,
                                           family, rslora):
    from peft import PeftModel

    build, batch = (tiny_t5, t5_batch) if family == "t5" else (tiny_llama, llama_batch)
    targets = {"targets": ("q", "v")}
    ours = trained_lora(build, rslora=rslora, **targets)
    export_peft(ours, tmp_path / "peft", "tiny")
    theirs = PeftModel.from_pretrained(build(), tmp_path / "peft")
    assert torch.allclose(logits_of(ours, batch), logits_of(theirs, batch), atol=1e-5)


def test_merged_model_saves_as_a_plain_hf_model(tmp_path, tiny_t5, t5_batch, logits_of):
    from transformers import T5ForConditionalGeneration

    model = trained_lora(tiny_t5)
    expected = logits_of(model, t5_batch)
    merged = merged_model(model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path / "m")
    again = T5ForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    assert torch.allclose(logits_of(again, t5_batch), expected, atol=1e-5)


def test_methods_without_a_plain_form_are_refused(tmp_path, tiny_t5):
    model = tiny_t5()
    apply_methods(model, [LoraConfig(r=2), AlignmentConfig()])
    with pytest.raises(ModelError, match="also has alignment"):
        export_peft(model, tmp_path / "x", "tiny")
    with pytest.raises(ModelError, match="also has alignment"):
        merged_model(model)
