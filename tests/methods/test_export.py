"""Interop: LoRA exports that HF peft loads, and merged models that plain transformers loads."""

import pytest
import torch

from peftlab.errors import ModelError
from peftlab.methods import apply_methods
from peftlab.methods.alignment import AlignmentConfig
from peftlab.methods.export import export_peft, merged_model
from peftlab.methods.lora import LoraConfig, LoraLinear


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
    with pytest.raises(ModelError, match="holds one method; this model has lora, alignment"):
        export_peft(model, tmp_path / "x", "tiny")
    with pytest.raises(ModelError, match="has lora and also has alignment .alignment: it adds a hypernetwork"):
        merged_model(model)
    assert any(isinstance(m, LoraLinear) for m in model.modules())  # refused before anything changed


def _prompted(build, method):
    from peftlab.methods.hooks import virtual_tokens
    from peftlab.methods.p_tuning import PTuningConfig
    from peftlab.methods.prompt_tuning import PromptTuningConfig

    cfg = {"prompt_tuning": PromptTuningConfig(num_virtual_tokens=4),
           "p_tuning_mlp": PTuningConfig(num_virtual_tokens=4, hidden=8),
           "p_tuning_lstm": PTuningConfig(num_virtual_tokens=4, encoder="lstm", hidden=8)}[method]
    model = build()
    apply_methods(model, [cfg])
    with torch.no_grad():  # a prompt that visibly steers the tiny model
        vt = virtual_tokens.find(model)
        next(iter(vt.adapter_parameters())).normal_(std=2.0, generator=torch.Generator().manual_seed(9))
    return model


@pytest.mark.filterwarnings("ignore:Position ids are not supported:UserWarning")
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning_mlp", "p_tuning_lstm"])
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_peft_loads_prompt_exports_and_matches(tmp_path, tiny_t5, tiny_llama, t5_batch, llama_batch, logits_of,
                                               family, method):
    """Prompt tuning and P-tuning export peft's prompt_embeddings (P-tuning's encoder applied, as peft
    saves it); PeftModel.from_pretrained gives the same real-token logits and greedy text."""
    import json

    from peft import PeftModel

    build, batch = (tiny_t5, t5_batch) if family == "t5" else (tiny_llama, llama_batch)
    ours = _prompted(build, method)
    export_peft(ours, tmp_path / "peft", "tiny")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == ("PROMPT_TUNING" if method == "prompt_tuning" else "P_TUNING")
    theirs = PeftModel.from_pretrained(build(), tmp_path / "peft")
    expected = logits_of(theirs, batch)
    expected = expected if family == "t5" else expected[:, 4:]  # peft also returns the virtual positions
    torch.testing.assert_close(logits_of(ours, batch), expected, atol=1e-5, rtol=0)
    ids = batch["input_ids"][:, :5]
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, pad_token_id=0,
              eos_token_id=None)
    with torch.no_grad():  # peft 0.21 + transformers 5: causal generate is right only without the cache
        reference = theirs.generate(**kw, **({} if family == "t5" else {"use_cache": False}))
        assert torch.equal(ours.generate(**kw), reference)


def test_prompt_methods_cannot_merge_and_export_alone(tmp_path, tiny_t5):
    model = _prompted(tiny_t5, "prompt_tuning")
    with pytest.raises(ModelError, match="prompt_tuning: its virtual tokens are extra inputs"):
        merged_model(model)
    from peftlab.methods.prompt_tuning import PromptTuningConfig

    both = tiny_t5()
    apply_methods(both, [LoraConfig(r=2), PromptTuningConfig(num_virtual_tokens=2)])
    with pytest.raises(ModelError, match="one method; this model has lora, prompt_tuning"):
        export_peft(both, tmp_path / "x", "tiny")
