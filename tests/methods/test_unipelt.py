"""UniPELT against AdapterHub ``adapters`` 1.3 (fixtures made by ``tests/fixtures/adapters_ref/
make_fixtures.py`` in a separate venv, see ``test_adapters_parity.py``), and its gates, folding,
composition and errors.

Name mapping (AdapterHub -> peftlab), L a wrapped linear, A an attention module, F the parent of a
FFN branch (T5 ``<stack>.block.i.layer.-1``; LLaMA ``model.layers.i``, AdapterHub's ``output_adapters``):
  ``L.loras.<case>.lora_A / lora_B / gate.*``             -> ``L.lora_a / lora_b / gate.*``
  ``A.prefix_tuning.prefix_gates.<case>.*``                -> ``A.unipelt_prefix.gate.*``
  ``F[.output_adapters].adapters.<case>.adapter_down.0 / adapter_up / gate`` -> ``F.unipelt_ffn.down / up / gate``
  prefix rows: AdapterHub keeps one MLP per location (``encoder_prefix``: T5 encoder self-attention,
  ``self_prefix``: decoder self-attention, ``cross_prefix``: cross-attention); its rows, W_2 tanh(W_1 E + b_1)
  + b_2 viewed as (P, layers·2, heads, head_dim), are copied into peftlab's plain rows
  (``prefix_projection: 0``, the form a run saves) as ``A.unipelt_prefix.key / value``; on LLaMA the keys
  rotated by +P, as peftlab's prefix keys sit P positions before the input (see ``prefix.py``).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from peftlab.errors import ModelError
from peftlab.methods import apply_methods, fold_methods, peft_state
from peftlab.methods.io import load_adapter, save_adapter
from peftlab.methods.lora import LoraConfig, merge
from peftlab.methods.prefix import PrefixConfig, rope_at
from peftlab.methods.unipelt import SLOT, GatedAdapter, GatedLoraLinear, GatedPrefixKV, UniPELTConfig

from conftest import build_llama, build_t5, logits
from test_adapters_parity import FIXTURES, META, build_base

ATOL = 1e-5  # float32; the two transformers versions agree on the base model to ~1e-6


def hub_config_matches(case: str, cfg: UniPELTConfig) -> None:
    prefix, adapter, lora = META["cases"][case]["config"]["configs"]
    assert prefix["use_gating"] and prefix["shared_gating"] and prefix["prefix_length"] == cfg.prefix_length
    assert (prefix["encoder_prefix"], prefix["cross_prefix"]) == (cfg.encoder_self, cfg.cross)
    assert adapter["use_gating"] and adapter["original_ln_before"] and not adapter["is_parallel"]  # Pfeiffer
    assert adapter["reduction_factor"] == cfg.reduction_factor and adapter["non_linearity"] == cfg.nonlinearity
    assert adapter["output_adapter"] and not adapter["mh_adapter"] and not adapter["cross_adapter"]
    assert lora["use_gating"] and lora["r"] == cfg.r and lora["attn_matrices"] == list(cfg.lora_targets)
    assert lora["selfattn_lora"] and not lora["intermediate_lora"] and not lora["output_lora"]


def hub_prefix_rows(hub: dict, family: str, case: str) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """AdapterHub's prefix MLPs evaluated: location -> [(key, value), each (H_kv, P, d), per layer]."""
    config = META["configs"][family]
    if family == "t5":
        heads, dim = config["num_heads"], config["d_kv"]
    else:
        heads, dim = config["num_key_value_heads"], config["hidden_size"] // config["num_attention_heads"]
    out = {}
    for key in hub:
        if not key.endswith(".wte.weight"):
            continue
        pre, location = key[: -len("wte.weight")], key.split(f"prefix_tunings.{case}.")[1].split(".")[0]
        emb = hub[pre + "wte.weight"]  # E: (P, d)
        hidden = torch.tanh(emb @ hub[pre + "control_trans.0.weight"].T + hub[pre + "control_trans.0.bias"])
        flat = hidden @ hub[pre + "control_trans.2.weight"].T + hub[pre + "control_trans.2.bias"]  # (P, L·2·H·d)
        kv = flat.view(emb.shape[0], -1, heads, dim).permute(1, 2, 0, 3)  # (L·2, H, P, d)
        out[location] = [(kv[2 * i], kv[2 * i + 1]) for i in range(kv.shape[0] // 2)]
    return out


def location(family: str, name: str) -> str:
    if family == "llama":
        return "self_prefix"
    if name.startswith("encoder."):
        return "encoder_prefix"
    return "cross_prefix" if ".EncDecAttention" in name else "self_prefix"


def copy_hub_weights(model, family: str, case: str, hub: dict) -> int:
    """Copy AdapterHub's weights in by the mapping of the module docstring; returns how many of its
    tensors were used (every one but the prefix MLPs, which are evaluated instead)."""
    used, rows, seen = set(), hub_prefix_rows(hub, family, case), {}
    params = dict(model.named_parameters())

    def take(ours: str, theirs: str):
        params[ours].copy_(hub[theirs])
        used.add(theirs)

    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, GatedLoraLinear):
                for a, b in (("lora_a", "lora_A"), ("lora_b", "lora_B"), ("gate.weight", "gate.weight"),
                             ("gate.bias", "gate.bias")):
                    take(f"{name}.{a}", f"{name}.loras.{case}.{b}")
            elif isinstance(m, GatedAdapter):
                parent = name.rpartition(".")[0]
                hub_pre = f"{parent}.adapters.{case}." if family == "t5" else f"{parent}.output_adapters.adapters.{case}."
                for a, b in (("down", "adapter_down.0"), ("up", "adapter_up"), ("gate", "gate")):
                    for leaf in ("weight", "bias"):
                        take(f"{name}.{a}.{leaf}", f"{hub_pre}{b}.{leaf}")
            elif isinstance(m, GatedPrefixKV):
                attention = name.rpartition(".")[0]
                for leaf in ("weight", "bias"):
                    take(f"{name}.gate.{leaf}", f"{attention}.prefix_tuning.prefix_gates.{case}.{leaf}")
                loc = location(family, name)
                key, value = rows[loc][seen.setdefault(loc, 0)]
                seen[loc] += 1
                if m.cos is not None:  # our keys are un-rotated by P positions: store R(+P) k
                    half = key.shape[-1] // 2
                    key = key * m.cos + torch.cat((-key[..., half:], key[..., :half]), dim=-1) * m.sin
                m.key.copy_(key), m.value.copy_(value)
    assert {loc: len(r) for loc, r in rows.items()} == seen, "peftlab and AdapterHub prefix different attentions"
    return len(used)


CASES = {"t5_unipelt": "t5", "llama_unipelt": "llama"}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_adapterhub(case):
    family = CASES[case]
    # AdapterHub's rows, evaluated (see above), and its gates' mean over the call
    cfg = UniPELTConfig(prefix_length=5, prefix_projection=0, gate_pooling="reference")
    hub_config_matches(case, cfg)
    model, batch, base_logits = build_base(family)
    torch.testing.assert_close(logits(model, batch), base_logits, atol=ATOL, rtol=0)
    change = META["cases"][case]["base_change"]  # see make_fixtures.BASE_CHANGES
    if change == "zero_relative_attention_bias":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "relative_attention_bias" in name:
                    p.zero_()
        base_logits = logits(model, batch)
    else:  # eager attention in the reference; peftlab's prefix works the same under SDPA and eager
        assert change == "eager_attention"
    apply_methods(model, [cfg])
    stored = load_file(FIXTURES / f"{case}.safetensors")
    hub = {k[len("adapter."):]: v for k, v in stored.items() if k.startswith("adapter.")}
    n = copy_hub_weights(model, family, case, hub)
    assert n == len([k for k in hub if "prefix_tunings" not in k]), "some AdapterHub weights have no peftlab place"
    expected = stored["logits"]
    assert (expected - base_logits).abs().max() > 1e-2, "the reference adapter did not change the outputs"
    torch.testing.assert_close(logits(model, batch), expected, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------
# Gates, folding, merging, decoders, composition, errors
# ------------------------------------------------------------------------------------------------
BUILD = {"t5": build_t5, "llama": build_llama}
SMALL = dict(prefix_length=3, prefix_projection=16)


def batch_of(n=2, seed=1, length=6):
    ids = torch.randint(2, 100, (n, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids}


def randomize(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("pooling", ["causal", "reference"])
def test_gates_scale_each_sub_module_by_the_mean_over_positions(tiny_llama, pooling):
    """G_t = mean_{u<=t} σ(W x_u + b) (causal; reference: G = mean_t σ(W x_t + b) over the call): a gate
    pushed to 0 removes its sub-module; LoRA's α/r is gone."""
    model = tiny_llama()
    apply_methods(model, [UniPELTConfig(modules=("lora", "adapter"), gate_pooling=pooling)])
    randomize(model)
    base, batch = tiny_llama(), batch_of()
    lora = next(m for m in model.modules() if isinstance(m, GatedLoraLinear))
    x = torch.randn(2, 5, lora.in_features)
    with torch.no_grad():
        s = torch.sigmoid(x @ lora.gate.weight.T + lora.gate.bias)  # (B, T, 1)
        if pooling == "causal":
            g = s.cumsum(dim=1) / torch.arange(1, 6)[None, :, None]  # (B, T, 1)
        else:
            g = s.mean(dim=1, keepdim=True)  # (B, 1, 1)
        expected = x @ lora.weight.T + g * (x @ lora.lora_a.T @ lora.lora_b.T)
        torch.testing.assert_close(lora(x), expected, atol=1e-5, rtol=0)
        for m in model.modules():
            if isinstance(m, (GatedLoraLinear, GatedAdapter)):
                m.gate.bias.fill_(-1e4)  # σ -> 0: the sub-module is off
    torch.testing.assert_close(logits(model, batch), logits(base, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_folding_the_prefix_mlp_keeps_outputs_and_saves_rows(family, tmp_path):
    model = BUILD[family]()
    state = apply_methods(model, [UniPELTConfig(**SMALL)])
    randomize(model)
    batch = batch_of()
    before = logits(model, batch)
    trained = state.trainable_params(model)
    save_adapter(model, tmp_path, base_model={"name": "tiny"}, fold=True)
    torch.testing.assert_close(logits(model, batch), before, atol=1e-6, rtol=0)
    folded = peft_state(model)
    assert folded.configs[0].prefix_projection == 0 and folded.trainable_params(model) < trained
    assert not hasattr(model, "unipelt_prefix_mlp")
    fresh = BUILD[family]()
    load_adapter(fresh, tmp_path, base_model={"name": "tiny"})
    torch.testing.assert_close(logits(fresh, batch), before, atol=1e-6, rtol=0)


def test_gated_lora_is_never_merged_or_exported(tmp_path):
    from peftlab.methods.export import export_peft, merged_model

    model = build_t5()
    apply_methods(model, [UniPELTConfig(**SMALL)])
    with pytest.raises(ModelError, match="gated LoRA cannot be merged"):
        merge(model)
    with pytest.raises(ModelError, match="unipelt"):
        merged_model(model)
    with pytest.raises(ModelError, match="unipelt"):
        export_peft(model, tmp_path / "x", "tiny")


def test_reference_decoder_gates_pool_over_the_call():
    """With the references' pooling the gates of a decoder read the whole call: the first step of
    cached generation is the forward of the prompt alone, a later step reads its new token alone, and
    neither is what the forward of the whole sequence gives (its gates pool over every position,
    later ones too; module docstring) -- unless every gate is constant, which this checks too."""
    model = BUILD["llama"]()
    apply_methods(model, [UniPELTConfig(**SMALL, gate_pooling="reference")])
    randomize(model)
    ids = batch_of()["input_ids"]

    def steps():
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
        return out, logits(model, {"input_ids": out.sequences})

    out, full = steps()
    torch.testing.assert_close(out.scores[0], logits(model, {"input_ids": ids})[:, -1], atol=1e-5, rtol=0)
    for k in (0, 2):
        assert (out.scores[k] - full[:, ids.shape[1] - 1 + k]).abs().max() > 1e-4
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (GatedLoraLinear, GatedPrefixKV, GatedAdapter)):
                m.gate.weight.zero_()  # G = σ(b): the same for every input
    out, full = steps()
    for k, s in enumerate(out.scores):
        torch.testing.assert_close(s, full[:, ids.shape[1] - 1 + k], atol=1e-5, rtol=0)


def causal_model(family, **kw):
    model = BUILD[family]()
    apply_methods(model, [UniPELTConfig(**SMALL, **kw)])
    return randomize(model)


def padded_prompt(family):
    """Two prompts of 6 tokens, the second with 2 padding tokens (left on LLaMA, as generate wants it)."""
    ids = batch_of(length=6)["input_ids"]
    mask = torch.ones_like(ids)
    if family == "llama":
        mask[1, :2] = 0
    else:
        mask[1, 4:] = 0
    return ids, mask


def full_forward(model, family, ids, mask, sequences):
    """Logits of the uncached forward of the whole generated sequences: (B, new tokens, V), position k
    being what predicts the k-th new token."""
    if family == "t5":
        return logits(model, {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": sequences[:, :-1]})
    full_mask = torch.cat((mask, mask.new_ones(mask.shape[0], sequences.shape[1] - ids.shape[1])), dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp_min(0)  # generate's positions under left padding
    out = logits(model, {"input_ids": sequences, "attention_mask": full_mask, "position_ids": positions})
    return out[:, ids.shape[1] - 1 : -1]


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_cached_generation_equals_the_full_forward(family):
    """Causal gates carry their running sums through the KV cache: each step of greedy generation
    scores exactly what the uncached forward of the whole sequence gives, and the tokens are the
    ones generation without a cache picks."""
    model, (ids, mask) = causal_model(family), padded_prompt(family)
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, output_scores=True,
              return_dict_in_generate=True)
    with torch.no_grad():
        cached = model.generate(**kw, use_cache=True)
        uncached = model.generate(**kw, use_cache=False)
    full = full_forward(model, family, ids, mask, cached.sequences)
    assert len(cached.scores) == full.shape[1] == 5
    for k, s in enumerate(cached.scores):
        torch.testing.assert_close(s, full[:, k], atol=1e-5, rtol=0)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.equal(cached.sequences[:, -5:] if family == "llama" else cached.sequences[:, 1:], full.argmax(-1))


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_beam_search_reorders_the_running_sums_with_the_cache(family):
    """Each beam's score is the sum of its tokens' log-probabilities under the full forward, which
    only holds if the gates' sums follow the cache's rows when beam search reorders them (no beam
    ends early: min_new_tokens; no length penalty)."""
    model, (ids, mask) = causal_model(family), padded_prompt(family)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, num_beams=3,
                             do_sample=False, length_penalty=0.0, output_scores=True, return_dict_in_generate=True)
    full = torch.log_softmax(full_forward(model, family, ids, mask, out.sequences), dim=-1)
    tokens = out.sequences[:, -full.shape[1]:]
    torch.testing.assert_close(out.sequences_scores, full.gather(-1, tokens[..., None]).sum((1, 2)), atol=1e-4, rtol=0)


def test_a_cropped_cache_continues_from_its_last_kept_position():
    from transformers import DynamicCache

    model = causal_model("llama")
    ids = batch_of(length=9)["input_ids"]
    with torch.no_grad():
        cache = model(input_ids=ids[:, :7], use_cache=True).past_key_values
        cache.crop(-2)  # what assisted decoding does after rejecting drafted tokens: 5 positions left
        stepped = model(input_ids=ids[:, 5:], cache=cache).logits
    torch.testing.assert_close(stepped, logits(model, {"input_ids": ids})[:, 5:], atol=1e-5, rtol=0)
    with pytest.raises(ModelError, match="cache that this model's own forward returned"):
        base_cache = BUILD["llama"]()(input_ids=ids[:, :5], use_cache=True).past_key_values
        model(input_ids=ids[:, 5:], cache=base_cache)
    assert isinstance(cache, DynamicCache)


def test_a_4d_mask_is_refused_and_padding_is_left_out_of_every_gate():
    model = causal_model("llama")
    ids = batch_of(n=1, length=6)["input_ids"]
    with pytest.raises(ModelError, match="4-D attention mask"):
        model(input_ids=ids, attention_mask=torch.ones(1, 1, 6, 6, dtype=torch.bool))
    junk = torch.cat((ids, ids.flip(1)), dim=1)  # the same 6 tokens, then 6 of padding
    padded = logits(model, {"input_ids": junk, "attention_mask": torch.tensor([[1] * 6 + [0] * 6])})
    torch.testing.assert_close(padded[:, :6], logits(model, {"input_ids": ids}), atol=1e-5, rtol=0)


def test_gradient_checkpointing_recomputes_with_the_same_masks():
    """Checkpointing recomputes the blocks in backward, after the stack returned: the gates must pool
    with the call's mask then too, or the gradients would be another function's."""
    grads = []
    for checkpointing in (False, True):
        model = causal_model("llama")
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ids = batch_of(length=8)["input_ids"]
        mask = torch.ones_like(ids)
        mask[1, 5:] = 0
        model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_adapters_saved_before_gate_pooling_reload_with_the_reference_pooling(tmp_path):
    """A manifest without ``gate_pooling`` was trained with the references' pooling, and reloads with it."""
    import json

    from peftlab.methods.io import MANIFEST

    model = causal_model("llama", gate_pooling="reference")
    save_adapter(model, tmp_path, base_model={"name": "tiny"})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["methods"][0].pop("gate_pooling") == "reference"
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    fresh = BUILD["llama"]()
    state = load_adapter(fresh, tmp_path, base_model={"name": "tiny"})
    assert state.configs[0].gate_pooling == "reference"
    batch = batch_of()
    torch.testing.assert_close(logits(fresh, batch), logits(model, batch), atol=1e-6, rtol=0)
    assert UniPELTConfig().gate_pooling == "causal"  # what a config written today means


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_bf16_autocast_and_bf16_base(family):
    batch = batch_of()
    model = BUILD[family]()
    apply_methods(model, [UniPELTConfig(**SMALL)])
    randomize(model)
    full = logits(model, batch)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    out.loss.backward()
    torch.testing.assert_close(out.logits.float(), full, atol=0.15, rtol=0)  # bf16: ~3 significant digits
    half = BUILD[family]().to(torch.bfloat16)
    apply_methods(half, [UniPELTConfig(**SMALL)])
    assert half(**batch).logits.dtype == torch.bfloat16


def test_composes_with_prefix_tuning_and_refuses_a_second_lora(tiny_t5):
    model = tiny_t5()
    apply_methods(model, [PrefixConfig(length=2), UniPELTConfig(**SMALL)])  # two sets of rows per attention
    q = model.encoder.block[0].layer[0].SelfAttention
    assert hasattr(q, "prefix") and hasattr(q, SLOT)
    with pytest.raises(ModelError, match=r"unipelt: .*SelfAttention.q is already wrapped \(LoraLinear\)"):
        apply_methods(tiny_t5(), [LoraConfig(r=2), UniPELTConfig(**SMALL)])
    with pytest.raises(ModelError, match=r"lora: .*SelfAttention.q is already wrapped \(GatedLoraLinear\)"):
        apply_methods(tiny_t5(), [UniPELTConfig(**SMALL), LoraConfig(r=2)])


@pytest.mark.parametrize("kw, field", [
    (dict(modules=("lora", "bitfit")), "modules"), (dict(modules="lora"), "modules"), (dict(r=0), "r"),
    (dict(prefix_length=0), "prefix_length"), (dict(prefix_projection=-1), "prefix_projection"),
    (dict(lora_dropout=1.0), "lora_dropout"), (dict(lora_targets=()), "lora_targets"),
    (dict(reduction_factor=0), "reduction_factor"), (dict(bottleneck=0), "bottleneck"),
    (dict(nonlinearity="sigmoidd"), "nonlinearity"), (dict(adapter_sublayers=("mlp",)), "adapter_sublayers"),
    (dict(adapter_init="xavier"), "adapter_init"),
    (dict(encoder_self=False, decoder_self=False, cross=False), "encoder_self"),
    (dict(gate_pooling="mean"), "gate_pooling"),
])
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        UniPELTConfig(**kw)


def test_shipped_config_applies_to_mini_t5():
    from peftlab.config import load_config
    from peftlab.lab.run import build
    from peftlab.schema import RunConfig
    from tiny_runs import ROOT

    cfg = load_config(RunConfig, ROOT / "configs" / "mini-t5" / "unipelt.yaml")
    loaded, state = build(cfg)
    c = loaded.model.config  # mini-t5: d = 256, 4 + 4 blocks, 8 heads x 32
    lora = 2 * (4 + 2 * 4) * (8 * (256 + 256) + 257)
    prefix = 10 * 256 + (256 * 128 + 128) + (128 * 12 * 512 + 12 * 512) + 12 * 257
    adapter = 8 * (2 * 256 * 16 + 16 + 256 + 257)
    assert (c.d_model, c.num_layers, c.num_decoder_layers) == (256, 4, 4)
    assert state.counts(loaded.model) == {"unipelt": lora + prefix + adapter}


def test_torch_compile_traces_the_pools_without_graph_breaks():
    """The stack hooks record masks and leave running sums on the cache the forward makes inside:
    dynamo traces both (no graph break) and the compiled loss is the eager one."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = causal_model("llama").train()
    ids = batch_of(length=8)["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    eager = model(**batch).loss
    compiled = torch.compile(model, backend="aot_eager")(**batch).loss
    compiled.backward()
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    torch._dynamo.reset()


def test_a_run_saved_before_gate_pooling_reads_as_the_reference_gate(tmp_path):
    """A committed UniPELT run predates ``gate_pooling``: its config reads as the leaking reference
    gate it was trained with, so a bench neither reuses it as today's causal UniPELT nor resumes it so."""
    from peftlab.lab.run import load_run_config

    (tmp_path / "config.yaml").write_text("methods:\n- {name: unipelt, r: 4}\n- {name: lora, r: 2}\n")
    cfg = load_run_config(tmp_path)
    assert cfg.methods[0].gate_pooling == "reference" and cfg.methods[1].r == 2
    (tmp_path / "config.yaml").write_text("methods:\n- {name: unipelt, r: 4, gate_pooling: causal}\n")
    assert load_run_config(tmp_path).methods[0].gate_pooling == "causal"
