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
