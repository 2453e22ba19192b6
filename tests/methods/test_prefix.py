"""Prefix tuning (peftlab/methods/prefix.py): what the contract table does not cover — where the
prefix reaches on T5, folding the MLP, parity with HF peft on tiny LLaMA, export, generation, bf16."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from peftlab.errors import ModelError
from peftlab.methods import apply_methods, fold_methods, peft_state
from peftlab.methods.export import export_peft
from peftlab.methods.io import MANIFEST, WEIGHTS, load_adapter, save_adapter
from peftlab.methods.lora import LoraConfig
from peftlab.methods.prefix import MLP_ATTR, PrefixConfig

from conftest import build_llama, build_t5, logits
from test_contract import prefix_llama, prefix_t5

BASE = {"name": "tiny", "init": "random", "config": {"seed": 0}}
P = 3

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # peft passes past_key_values


def trained(model, batch, steps=3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    return model.eval()


def encoder_out(model, batch):
    with torch.no_grad():
        return model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


# ------------------------------------------------------------------------------------------------
# Where the prefix goes on T5
# ------------------------------------------------------------------------------------------------
def test_prefix_reaches_the_t5_encoder(t5_batch):
    """HF peft's prefix never reaches the T5 encoder (peft issue #491); ours does, and only when asked."""
    base = encoder_out(build_t5(), t5_batch)
    on = build_t5()
    apply_methods(on, [PrefixConfig(length=P)])
    off = build_t5()
    apply_methods(off, [PrefixConfig(length=P, encoder_self=False)])
    assert (encoder_out(on, t5_batch) - base).abs().max() > 1e-3
    torch.testing.assert_close(encoder_out(off, t5_batch), base, atol=0, rtol=0)
    assert (logits(off, t5_batch) - logits(build_t5(), t5_batch)).abs().max() > 1e-3  # decoder still prefixed


@pytest.mark.parametrize("switch, attention", [("encoder_self", "encoder.block.0.layer.0.SelfAttention"),
                                               ("decoder_self", "decoder.block.0.layer.0.SelfAttention"),
                                               ("cross", "decoder.block.0.layer.1.EncDecAttention")])
def test_each_t5_attention_is_switchable(switch, attention):
    model = build_t5()
    apply_methods(model, [PrefixConfig(length=P, **{switch: False})])
    names = {n for n, _ in model.named_parameters()}
    assert f"{attention}.prefix.key" not in names
    assert len([n for n in names if n.endswith("prefix.key")]) == 4  # the other two kinds x 2 layers


def test_llama_prefix_has_one_row_per_key_value_head():
    model = build_llama()  # 4 query heads, 2 key/value heads, head_dim 8
    apply_methods(model, [PrefixConfig(length=P)])
    assert model.model.layers[0].self_attn.prefix.key.shape == (2, P, 8)


def test_no_selected_attention_names_the_fields():
    with pytest.raises(ModelError, match="encoder_self=True, decoder_self=False, cross=False"):
        apply_methods(build_llama(), [PrefixConfig(decoder_self=False, cross=False)])


@pytest.mark.parametrize("kwargs, field", [(dict(length=0), "length"), (dict(projection=-1), "projection"),
                                           (dict(encoder_self=False, decoder_self=False, cross=False), "cross")])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PrefixConfig(**kwargs)


# ------------------------------------------------------------------------------------------------
# Folding the reparametrisation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_fold_gives_identical_outputs_and_saves_no_mlp(family, t5_batch, llama_batch, tmp_path):
    build, batch = (build_t5, t5_batch) if family == "t5" else (build_llama, llama_batch)
    model = build()
    trained_state = apply_methods(model, [PrefixConfig(length=P, projection=16)])
    trained(model, batch)
    before = logits(model, batch)
    folded = fold_methods(model)
    assert not hasattr(model, MLP_ATTR)
    assert folded.configs == [PrefixConfig(length=P, projection=0)]
    assert peft_state(model) is folded and trained_state.configs[0].projection == 16  # the run's record stays
    counts = {"t5": prefix_t5, "llama": prefix_llama}[family]
    assert trained_state.counts(model) == {"prefix": counts(P, 16)(model.config)}
    assert folded.counts(model) == {"prefix": counts(P)(model.config)}
    assert all(n.endswith(("prefix.key", "prefix.value")) for n in folded.trainable_names())
    torch.testing.assert_close(logits(model, batch), before, atol=0, rtol=0)
    assert fold_methods(model).configs == folded.configs  # idempotent

    save_adapter(model, tmp_path, base_model=BASE)
    with safe_open(str(tmp_path / WEIGHTS), "pt") as f:
        assert not any(MLP_ATTR in k for k in f.keys())
    assert json.loads((tmp_path / MANIFEST).read_text())["methods"][0]["projection"] == 0
    fresh = build()
    load_adapter(fresh, tmp_path, base_model=BASE)
    assert not hasattr(fresh, MLP_ATTR)
    torch.testing.assert_close(logits(fresh, batch), before, atol=0, rtol=0)


def test_save_adapter_folds_when_asked(llama_batch, tmp_path):
    model = build_llama()
    apply_methods(model, [PrefixConfig(length=P, projection=8)])
    save_adapter(model, tmp_path / "kept", base_model=BASE)  # a checkpoint keeps the MLP to resume with
    assert hasattr(model, MLP_ATTR)
    before = logits(model, llama_batch)
    save_adapter(model, tmp_path / "folded", base_model=BASE, fold=True)
    assert not hasattr(model, MLP_ATTR)
    for sub in ("kept", "folded"):
        fresh = build_llama()
        load_adapter(fresh, tmp_path / sub, base_model=BASE)
        assert hasattr(fresh, MLP_ATTR) == (sub == "kept")
        torch.testing.assert_close(logits(fresh, llama_batch), before, atol=1e-6, rtol=0)


def test_fold_leaves_other_methods_alone(llama_batch):
    model = build_llama()
    apply_methods(model, [LoraConfig(r=2), PrefixConfig(length=P, projection=8)])
    lora_names = list(peft_state(model).param_names["lora"])
    state = fold_methods(model)
    assert state.param_names["lora"] == lora_names and state.configs[0] == LoraConfig(r=2)


# ------------------------------------------------------------------------------------------------
# HF peft: parity on tiny LLaMA, export
# ------------------------------------------------------------------------------------------------
def peft_prefix(projection):
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=bool(projection),
                                encoder_hidden_size=projection or None)
    model = get_peft_model(build_llama(), config)
    with torch.no_grad():  # move every weight away from its init
        for p in model.prompt_encoder["default"].parameters():
            p.normal_(std=0.5)
    return model


@pytest.mark.parametrize("projection", [0, 16])
def test_parity_with_peft_prefix_tuning_on_llama(projection, llama_batch):
    """Same weights in, same logits out (tolerance 1e-5, float32), with padding in the batch.
    peft places the prefix at positions 0..P-1 and the input after it; ours keeps the input's
    positions and rotates the prefix keys by -P, the same model (module docstring)."""
    theirs = peft_prefix(projection)
    encoder = theirs.prompt_encoder["default"]
    ours = build_llama()
    apply_methods(ours, [PrefixConfig(length=P, projection=projection)])
    with torch.no_grad():
        if projection:
            mlp = getattr(ours, MLP_ATTR)
            mlp.embedding.copy_(encoder.embedding.weight)
            for i in (0, 2):
                mlp.mlp[i].weight.copy_(encoder.transform[i].weight)
                mlp.mlp[i].bias.copy_(encoder.transform[i].bias)
        else:
            rows = encoder.embedding.weight.view(P, 2, 2, 2, 8)  # (P, layer, key/value, kv head, dim)
            for layer, block in enumerate(ours.model.layers):
                block.self_attn.prefix.key.copy_(rows[:, layer, 0].transpose(0, 1))
                block.self_attn.prefix.value.copy_(rows[:, layer, 1].transpose(0, 1))
    batch = {k: llama_batch[k] for k in ("input_ids", "attention_mask")}
    expected = logits(theirs, batch)
    assert (expected - logits(build_llama(), batch)).abs().max() > 1e-2  # the prefix matters
    torch.testing.assert_close(logits(ours, batch), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("projection", [0, 16])
def test_export_loads_in_peft_with_the_same_outputs(projection, llama_batch, tmp_path):
    from peft import PeftModel

    model = build_llama()
    apply_methods(model, [PrefixConfig(length=P, projection=projection)])
    trained(model, llama_batch)
    export_peft(model, tmp_path, "tiny-llama")
    theirs = PeftModel.from_pretrained(build_llama(), tmp_path)
    batch = {k: llama_batch[k] for k in ("input_ids", "attention_mask")}
    torch.testing.assert_close(logits(theirs, batch), logits(model, batch), atol=1e-5, rtol=0)


def test_t5_export_is_refused_with_the_reason(tmp_path):
    model = build_t5()
    apply_methods(model, [PrefixConfig(length=P)])
    with pytest.raises(ModelError, match="prefix.*T5 encoder.*#491"):
        export_peft(model, tmp_path, "tiny-t5")


def test_export_with_another_method_is_refused(tmp_path):
    model = build_llama()
    apply_methods(model, [LoraConfig(r=2), PrefixConfig(length=P)])
    with pytest.raises(ModelError, match="one method.*lora, prefix"):
        export_peft(model, tmp_path, "tiny-llama")


# ------------------------------------------------------------------------------------------------
# Generation, bf16, gradient checkpointing
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_generate_with_cache_matches_without(family, t5_batch, llama_batch):
    build, batch = (build_t5, t5_batch) if family == "t5" else (build_llama, llama_batch)
    model = build()
    apply_methods(model, [PrefixConfig(length=P)])
    kwargs = dict(input_ids=batch["input_ids"][:1], attention_mask=batch["attention_mask"][:1], max_new_tokens=5,
                  do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        cached, plain = model.generate(**kwargs, use_cache=True), model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached.sequences, plain.sequences)
    for x, y in zip(cached.scores, plain.scores):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_bf16_autocast_trains_and_stays_close(family, t5_batch, llama_batch):
    build, batch = (build_t5, t5_batch) if family == "t5" else (build_llama, llama_batch)
    model = build()
    state = apply_methods(model, [PrefixConfig(length=P, projection=8)])
    full = logits(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    params = dict(model.named_parameters())
    assert all(params[n].grad is not None and params[n].dtype == torch.float32 for n in state.trainable_names())
    torch.testing.assert_close(out.logits.float(), full, atol=0.1, rtol=0)  # bf16 has ~3 significant digits


def test_gradient_checkpointing_gives_the_same_gradients(t5_batch):
    grads = []
    for checkpointing in (False, True):
        model = build_t5()
        state = apply_methods(model, [PrefixConfig(length=P, projection=8)])
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**t5_batch).loss.backward()
        params = dict(model.named_parameters())
        grads.append([params[n].grad for n in state.trainable_names()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_config_from_yaml_data_round_trips():
    from peftlab.config import from_dict
    from peftlab.errors import ConfigError
    from peftlab.methods import MethodConfig

    cfg = from_dict(MethodConfig, {"name": "prefix", "length": 10, "projection": 64, "encoder_self": False})
    assert cfg == PrefixConfig(length=10, projection=64, encoder_self=False)
    assert from_dict(MethodConfig, cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="length must be >= 1"):
        from_dict(MethodConfig, {"name": "prefix", "length": 0})


def test_two_prefixes_on_one_model_are_refused():
    with pytest.raises(ModelError, match="prefix: .*already has a 'prefix'"):
        apply_methods(build_llama(), [PrefixConfig(length=2), PrefixConfig(length=3)])
