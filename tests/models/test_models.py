"""Model loading: short names, local directories, hub ids (offline: clear error), random init."""

import pytest
import torch

from peftlab.errors import ModelError
from peftlab.models.arch import family_of, get_family
from peftlab.models.loading import load_model, resolve_model_name, short_names
from peftlab.schema import ModelSpec

TINY = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4}


def test_short_name_resolves_to_the_shipped_directory():
    assert "mini-t5" in short_names()
    assert resolve_model_name("mini-t5").endswith("models/mini-t5")


def test_random_init_is_seeded_and_uses_overrides():
    a = load_model(ModelSpec(name="mini-t5", init="random", config=TINY), seed=3)
    b = load_model(ModelSpec(name="mini-t5", init="random", config=TINY), seed=3)
    c = load_model(ModelSpec(name="mini-t5", init="random", config=TINY), seed=4)
    assert a.model.config.d_model == 32 and a.family.name == "t5"
    wa, wb, wc = (next(m.model.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.tokenizer.pad_token_id == 0 and a.tokenizer.eos_token_id == 1


def test_local_directory_round_trip(tmp_path):
    src = load_model(ModelSpec(name="mini-t5", init="random", config=TINY), seed=0)
    src.model.save_pretrained(tmp_path / "m")
    src.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(ModelSpec(name=str(tmp_path / "m")))
    for (n, p), (_, q) in zip(src.model.named_parameters(), loaded.model.named_parameters()):
        assert torch.equal(p, q), n
    bf16 = load_model(ModelSpec(name=str(tmp_path / "m"), dtype="bfloat16"))
    assert next(bf16.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "name, message",
    [
        ("./missing/model", "does not exist"),
        ("/abs/missing", "does not exist"),
        ("bad name with spaces", "neither a short name"),
    ],
)
def test_bad_model_names(name, message):
    with pytest.raises(ModelError, match=message):
        resolve_model_name(name)


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="could not load model 'someone/not-here'"):
        load_model(ModelSpec(name="someone/not-here"))


def test_unknown_config_override_and_family(tmp_path):
    with pytest.raises(ModelError, match="model.config.d_modle"):
        load_model(ModelSpec(name="mini-t5", init="random", config={"d_modle": 8}))
    from transformers import GPTNeoXConfig  # GPT-2 has a table now; GPT-NeoX (fused query_key_value) not

    with pytest.raises(ModelError, match="'gpt_neox' has no peftlab architecture table"):
        family_of(GPTNeoXConfig())
    with pytest.raises(ModelError, match="unknown model family"):
        get_family("bert")


def _tied_tiny_t5():
    """A tiny T5 v1.1 (gated GELU) as transformers 5 builds it: head tied to the embedding."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from peftlab.models.t5 import T5

    tok = AutoTokenizer.from_pretrained(resolve_model_name("mini-t5"))
    torch.manual_seed(5)
    config = T5Config(vocab_size=len(tok), decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                      **{**T5.tiny_config, "feed_forward_proj": "gated-gelu"})
    return T5ForConditionalGeneration(config).eval(), tok


def _flan_like_checkpoint(path):
    """What a FLAN-T5 directory holds: tie_word_embeddings false in config.json, and both
    `shared.weight` and a different `lm_head.weight` in the weights (tiny T5, random)."""
    import json

    from safetensors.torch import save_file

    model, tok = _tied_tiny_t5()
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if ".embed_tokens." not in k}
    weights["lm_head.weight"] = torch.randn(weights["shared.weight"].shape, generator=torch.Generator().manual_seed(9))
    path.mkdir()
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.update(tie_word_embeddings=False, architectures=["T5ForConditionalGeneration"])
    config.pop("scale_decoder_outputs", None)  # as FLAN-T5's config.json, written by transformers 4
    (path / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(str(path))
    return weights


def test_flan_t5_untied_lm_head_stays_distinct_and_matches_the_disk(tmp_path):
    import logging

    from peftlab.methods import apply_methods
    from peftlab.methods.lora import LoraConfig

    disk = _flan_like_checkpoint(tmp_path / "flan")
    seen = []
    hf_log = logging.getLogger("transformers.modeling_utils")  # transformers' loggers do not propagate
    hf_log.addHandler(handler := logging.Handler(logging.WARNING))
    handler.emit = seen.append
    try:
        loaded = load_model(ModelSpec(name=str(tmp_path / "flan")))
    finally:
        hf_log.removeHandler(handler)
    assert not [r for r in seen if "NOT tie" in r.getMessage()]  # advice T5Config cannot take is not passed on
    model = loaded.model
    assert model.config.scale_decoder_outputs is False  # T5 v1.1: no d_model^-0.5 before the head
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, disk["lm_head.weight"])
    assert torch.equal(model.shared.weight, disk["shared.weight"])
    assert model.encoder.embed_tokens.weight is model.shared.weight  # the embeddings stay shared
    ids = torch.tensor([[5, 9, 17, 1]])
    with torch.no_grad():
        out = model(input_ids=ids, decoder_input_ids=ids[:, :3], output_hidden_states=True)
    expected = out.decoder_hidden_states[-1] @ disk["lm_head.weight"].T  # the head on disk, unscaled
    torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    model.tie_weights()  # what resize_token_embeddings, FSDP prepare or HF Trainer call: must not re-tie
    apply_methods(model, [LoraConfig(r=2, targets=["q", "v"])], loaded.family)
    assert torch.equal(model.lm_head.weight, disk["lm_head.weight"])


def test_random_twin_of_an_untied_t5_has_its_own_head(tmp_path):
    _flan_like_checkpoint(tmp_path / "flan")
    pretrained = load_model(ModelSpec(name=str(tmp_path / "flan"))).model
    twin = load_model(ModelSpec(name=str(tmp_path / "flan"), init="random"), seed=1).model
    assert twin.lm_head.weight.data_ptr() != twin.shared.weight.data_ptr()
    assert twin.encoder.embed_tokens.weight is twin.shared.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(twin) == count(pretrained) == count(_tied_tiny_t5()[0]) + pretrained.lm_head.weight.numel()
    twin.tie_weights()
    assert twin.lm_head.weight.data_ptr() != twin.shared.weight.data_ptr()
