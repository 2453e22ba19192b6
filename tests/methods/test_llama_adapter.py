"""LLaMA-Adapter v1/v2 (peftlab/methods/llama_adapter.py, llama_adapter_v2.py): seed 003's counts
on LLaMA-7B shapes, the paper's equation, parity and export with HF peft, composition, generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftlab.errors import ModelError
from peftlab.methods import apply_methods
from peftlab.methods.export import export_peft
from peftlab.methods.llama_adapter import SLOT, LlamaAdapterConfig
from peftlab.methods.llama_adapter_v2 import LlamaAdapterV2Config, LlamaAdapterV2Linear
from peftlab.methods.lora import LoraConfig, LoraLinear
from peftlab.methods.prefix import PrefixConfig

from conftest import build_llama, build_t5, logits

LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def meta_7b_counts(config):
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA_7B))
    return apply_methods(model, [config]).counts(model)


def test_v1_count_on_llama_7b_matches_seed_003():
    assert meta_7b_counts(LlamaAdapterConfig(length=10, layers=30)) == {"llama_adapter": 1_229_760}
    assert meta_7b_counts(LlamaAdapterConfig(length=10)) == {"llama_adapter": 1_229_760}  # default L = 32 - 2


def test_v2_count_on_llama_7b_matches_seed_003():
    assert meta_7b_counts(LlamaAdapterV2Config(length=10)) == {"llama_adapter_v2": 4_279_744}


def gated(model, values=None):
    """Give every adapted layer's prompt and gates non-trivial values (per-head gates unless equal)."""
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            prompt = getattr(layer.self_attn, SLOT, None)
            if prompt is not None:
                h = prompt.gate.numel()
                prompt.gate.copy_(torch.full((h,), 0.3 * (i + 1)) if values == "equal" else torch.linspace(-1, 1, h))
    return model


def test_delta_is_the_papers_equation():
    """g_h · softmax(q_h A_h^T / √d_h) B_h per head h, with A, B = P W_k, P W_v (GQA: head h uses
    key/value head h // (H / H_kv)), no RoPE on the prompt, on small tensors."""
    model = gated(build_llama())
    apply_methods(model, [LlamaAdapterConfig(length=3)])
    gated(model)
    attn = model.model.layers[0].self_attn
    prompt = getattr(attn, SLOT)
    q = torch.randn(2, 4, 5, 8)  # (B, H, q, d_h)
    with torch.no_grad():
        got = prompt.delta(attn, q, 8 ** -0.5)
        a = (prompt.prompt @ attn.k_proj.weight.T).view(3, 2, 8)  # (K, H_kv, d_h)
        b = (prompt.prompt @ attn.v_proj.weight.T).view(3, 2, 8)
        for h in range(4):
            kv = h // 2
            w = F.softmax(q[:, h] @ a[:, kv].T / 8 ** 0.5, dim=-1)  # (B, q, K)
            torch.testing.assert_close(got[:, :, h], prompt.gate[h] * (w @ b[:, kv]), atol=1e-6, rtol=0)


def test_prompts_go_on_the_top_layers_only():
    model = build_llama(num_hidden_layers=4)
    apply_methods(model, [LlamaAdapterConfig(length=2)])  # default: all but the lowest two
    assert [hasattr(layer.self_attn, SLOT) for layer in model.model.layers] == [False, False, True, True]
    with pytest.raises(ModelError, match="layers=5 but the model has 4"):
        apply_methods(build_llama(num_hidden_layers=4), [LlamaAdapterConfig(layers=5)])


@pytest.mark.parametrize("config", [LlamaAdapterConfig(), LlamaAdapterV2Config()])
def test_t5_is_refused_naming_the_family(config):
    with pytest.raises(ModelError, match=f"{config.name}.*'t5' family"):
        apply_methods(build_t5(), [config])


@pytest.mark.parametrize("kwargs, field", [(dict(length=0), "length"), (dict(layers=0), "layers")])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LlamaAdapterConfig(**kwargs)


# ------------------------------------------------------------------------------------------------
# HF peft's adaption prompt
# ------------------------------------------------------------------------------------------------
def test_parity_with_peft_adaption_prompt(llama_batch):
    """Same prompts, per-head gates set equal to peft's per-layer gate: logits agree to 1e-5
    (float32), with padding, and greedy generation gives the same tokens."""
    from peft import AdaptionPromptConfig, get_peft_model

    theirs = get_peft_model(build_llama(num_hidden_layers=3),
                            AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=4, adapter_layers=2))
    ours = build_llama(num_hidden_layers=3)
    apply_methods(ours, [LlamaAdapterConfig(length=4, layers=2)])
    gated(ours, "equal")
    with torch.no_grad():
        for i in (1, 2):
            peft_attn = theirs.base_model.model.model.layers[i].self_attn
            mine = getattr(ours.model.layers[i].self_attn, SLOT)
            peft_attn.adaption_gate.fill_(mine.gate[0].item())
            mine.prompt.copy_(peft_attn.adaption_prompt[0])
    batch = {k: llama_batch[k] for k in ("input_ids", "attention_mask")}
    expected = logits(theirs, batch)
    assert (expected - logits(build_llama(num_hidden_layers=3), batch)).abs().max() > 1e-2
    torch.testing.assert_close(logits(ours, batch), expected, atol=1e-5, rtol=0)
    kwargs = dict(input_ids=batch["input_ids"][:1], max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(ours.generate(**kwargs), theirs.generate(**kwargs))


def test_export_loads_in_peft_when_gates_are_equal(llama_batch, tmp_path):
    from peft import PeftModel

    model = build_llama(num_hidden_layers=3)
    apply_methods(model, [LlamaAdapterConfig(length=4, layers=2)])
    gated(model, "equal")
    export_peft(model, tmp_path, "tiny-llama")
    theirs = PeftModel.from_pretrained(build_llama(num_hidden_layers=3), tmp_path)
    batch = {k: llama_batch[k] for k in ("input_ids", "attention_mask")}
    torch.testing.assert_close(logits(theirs, batch), logits(model, batch), atol=1e-5, rtol=0)


def test_a_trained_adapter_with_one_gate_per_layer_exports_to_peft(llama_batch, tmp_path):
    """Per-head gates part after one step, so a trained per-head adapter is not peft's; with
    ``gate: layer`` (peft's own form) the trained adapter exports and peft gives its outputs."""
    from peft import PeftModel

    model = build_llama(num_hidden_layers=3)
    apply_methods(model, [LlamaAdapterConfig(length=4, layers=2, gate="layer")])
    batch = {k: llama_batch[k] for k in ("input_ids", "attention_mask")}
    params = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == 2 * (4 * model.config.hidden_size + 1)
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(2):
        model(**batch, labels=llama_batch["labels"]).loss.backward()
        opt.step()
        opt.zero_grad()
    gates = [m.gate for m in model.modules() if hasattr(m, "gate") and hasattr(m, "prompt")]
    assert gates and all(g.shape == (1,) and float(g.abs()) > 0 for g in gates)  # trained, one per layer
    export_peft(model, tmp_path, "tiny-llama")
    theirs = PeftModel.from_pretrained(build_llama(num_hidden_layers=3), tmp_path)
    torch.testing.assert_close(logits(theirs, batch), logits(model, batch), atol=1e-5, rtol=0)


def test_export_with_per_head_gates_is_refused(tmp_path):
    model = build_llama()
    apply_methods(model, [LlamaAdapterConfig(length=2)])
    gated(model)
    with pytest.raises(ModelError, match="model.layers.0.self_attn has per-head gates.*one gate per layer.*gate: layer"):
        export_peft(model, tmp_path, "tiny-llama")


def test_v2_export_is_refused(tmp_path):
    model = build_llama()
    apply_methods(model, [LlamaAdapterV2Config(length=2)])
    with pytest.raises(ModelError, match="llama_adapter_v2"):
        export_peft(model, tmp_path, "tiny-llama")


# ------------------------------------------------------------------------------------------------
# Generation, composition, bf16
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("configs", [[LlamaAdapterConfig(length=3)], [LlamaAdapterV2Config(length=3)],
                                     [LoraConfig(r=2), PrefixConfig(length=2), LlamaAdapterConfig(length=3)]],
                         ids=["v1", "v2", "lora+prefix+v1"])
def test_generate_with_cache_matches_without(configs, llama_batch):
    model = build_llama()
    apply_methods(model, configs)
    gated(model)
    kwargs = dict(input_ids=llama_batch["input_ids"][:1], max_new_tokens=5, do_sample=False,
                  output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        cached, plain = model.generate(**kwargs, use_cache=True), model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached.sequences, plain.sequences)
    for x, y in zip(cached.scores, plain.scores):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_prompt_keys_cached_for_decoding_follow_weight_changes(llama_batch):
    model = gated(build_llama())
    apply_methods(model, [LlamaAdapterConfig(length=3)])
    gated(model)
    batch = {"input_ids": llama_batch["input_ids"][:1]}
    first = logits(model, batch)
    torch.testing.assert_close(logits(model, batch), first, atol=0, rtol=0)  # served from the cache
    with torch.no_grad():
        model.model.layers[1].self_attn.adaption_prompt.prompt.mul_(2.0)
    assert (logits(model, batch) - first).abs().max() > 1e-4
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight.mul_(0.5)  # the frozen projection too
    second = logits(model, batch)
    model.model.layers[1].self_attn.adaption_prompt._cached = None
    torch.testing.assert_close(logits(model, batch), second, atol=0, rtol=0)


def test_lora_then_v2_scales_the_lora_output():
    model = build_llama()
    apply_methods(model, [LoraConfig(r=2), LlamaAdapterV2Config(length=2)])
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LoraLinear) and hasattr(q, "adapter_v2")
    assert isinstance(model.model.layers[0].self_attn.k_proj, LlamaAdapterV2Linear)
    x = torch.randn(3, 32)
    with torch.no_grad():
        q.lora_b.normal_()
        q.adapter_v2.adapter_scale.fill_(2.0)
        q.adapter_v2.adapter_bias.fill_(0.5)
        expected = 2.0 * (F.linear(x, q.weight) + F.linear(F.linear(x, q.lora_a), q.lora_b) * q.scaling + 0.5)
        torch.testing.assert_close(q(x), expected, atol=1e-5, rtol=0)


def test_v2_then_lora_on_the_same_linear_names_both():
    with pytest.raises(ModelError, match=r"lora: .*q_proj is already wrapped \(LlamaAdapterV2Linear\)"):
        apply_methods(build_llama(), [LlamaAdapterV2Config(length=2), LoraConfig(r=2)])


def test_v2_wraps_every_linear_and_unfreezes_the_norms():
    model = build_llama()
    state = apply_methods(model, [LlamaAdapterV2Config(length=2)])
    assert isinstance(model.lm_head, LlamaAdapterV2Linear)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert not linears  # every nn.Linear is wrapped
    names = set(state.trainable_names())
    assert {"model.norm.weight", "model.layers.1.input_layernorm.weight", "lm_head.adapter_scale"} <= names
    assert "lm_head.weight" not in names and "model.layers.0.mlp.up_proj.weight" not in names


@pytest.mark.parametrize("config", [LlamaAdapterConfig(length=3), LlamaAdapterV2Config(length=3)])
def test_bf16_autocast_trains(config, llama_batch):
    model = build_llama()
    state = apply_methods(model, [config])
    gated(model)
    full = logits(model, llama_batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**llama_batch)
    out.loss.backward()
    params = dict(model.named_parameters())
    assert torch.isfinite(out.loss)
    assert all(params[n].grad is not None and params[n].dtype == torch.float32 for n in state.trainable_names())
    torch.testing.assert_close(out.logits.float(), full, atol=0.1, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients(llama_batch):
    grads = []
    for checkpointing in (False, True):
        model = build_llama()
        state = apply_methods(model, [PrefixConfig(length=2, projection=8), LlamaAdapterV2Config(length=3)])
        gated(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**llama_batch).loss.backward()
        params = dict(model.named_parameters())
        grads.append([params[n].grad for n in state.trainable_names()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_config_from_yaml_data_round_trips():
    from peftlab.config import from_dict
    from peftlab.methods import MethodConfig

    for data, cfg in [({"name": "llama_adapter", "length": 4, "layers": 2}, LlamaAdapterConfig(length=4, layers=2)),
                      ({"name": "llama_adapter_v2"}, LlamaAdapterV2Config())]:
        assert from_dict(MethodConfig, data) == cfg
        assert from_dict(MethodConfig, cfg.to_dict()) == cfg


def test_v1_and_v2_on_one_model_are_refused():
    with pytest.raises(ModelError, match="llama_adapter_v2: .*already has a 'adaption_prompt'"):
        apply_methods(build_llama(), [LlamaAdapterConfig(length=2), LlamaAdapterV2Config(length=2)])
