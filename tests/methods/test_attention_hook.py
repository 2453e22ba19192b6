"""The attention hook point (peftlab/methods/attention.py): stock outputs with nothing attached,
and the extension protocol (key/value extenders, one core, output adders) on tiny T5 and LLaMA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods import apply_methods, peft_state
from peftlab.methods.hooks.attention import (
    EXTENSIONS,
    AttentionCore,
    KVExtender,
    OutputAdder,
    attach,
    attention_modules,
    base_implementation,
    extensions,
    use_attention_hook,
)
from peftlab.methods.lora import LoraConfig
from peftlab.models.arch import family_of

from conftest import build_llama, build_t5, logits

BUILD = {"t5": build_t5, "llama": build_llama}


def build(family, impl="sdpa", seed=0):
    model = BUILD[family](seed)
    if impl != model.config._attn_implementation:
        model.set_attn_implementation(impl)
    return model


@pytest.fixture
def batches(t5_batch, llama_batch):
    return {"t5": t5_batch, "llama": llama_batch}


both = pytest.mark.parametrize("family", ["t5", "llama"])
impls = pytest.mark.parametrize("impl", ["sdpa", "eager"])


# ------------------------------------------------------------------------------------------------
# Nothing attached: the stock implementation, bit for bit
# ------------------------------------------------------------------------------------------------
@both
@impls
def test_nothing_attached_matches_stock(family, impl, batches):
    batch = batches[family]  # padding in the second row
    stock, hooked = build(family, impl), build(family, impl)
    assert use_attention_hook(hooked) == f"peftlab_{impl}"
    assert base_implementation(hooked) == impl and base_implementation(stock) == impl
    assert torch.equal(logits(hooked, batch), logits(stock, batch))
    stock.train(), hooked.train()
    torch.manual_seed(0)
    a = stock(**batch).logits
    torch.manual_seed(0)
    b = hooked(**batch).logits
    assert torch.equal(a, b)


@both
def test_nothing_attached_generate_matches_stock(family, batches):
    batch = batches[family]
    stock, hooked = build(family), build(family)
    use_attention_hook(hooked)
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4,
                  do_sample=False, output_scores=True, return_dict_in_generate=True, use_cache=True,
                  pad_token_id=0)
    with torch.no_grad():
        a, b = stock.generate(**kwargs), hooked.generate(**kwargs)
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.scores, b.scores):
        assert torch.equal(x, y)


def test_use_attention_hook_is_idempotent(tiny_llama):
    model = tiny_llama()
    name = use_attention_hook(model)
    assert use_attention_hook(model) == name == model.config._attn_implementation == "peftlab_sdpa"
    assert base_implementation(model) == "sdpa"


# ------------------------------------------------------------------------------------------------
# Toy extensions
# ------------------------------------------------------------------------------------------------
class RandomRows(KVExtender):
    """P random key/value rows (per key/value head)."""

    method = "rows"

    def __init__(self, heads, dim, p=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.key = nn.Parameter(torch.randn(1, heads, p, dim, generator=g))
        self.value = nn.Parameter(torch.randn(1, heads, p, dim, generator=g))

    def extra_kv(self, module, key):
        return self.key.to(key.dtype), self.value.to(key.dtype)


class Recorder(AttentionCore):
    """Falls back to the base implementation and records what it was given."""

    def __init__(self, method="recorder"):
        super().__init__()
        self.method = method
        self.calls = []

    def attend(self, module, query, key, value, attention_mask, *, base, n_extra, is_causal, **kwargs):
        self.calls.append(dict(q=query.shape, k=key.shape, mask=attention_mask, n_extra=n_extra,
                               is_causal=is_causal, bias=kwargs.get("position_bias")))
        return base(module, query, key, value, attention_mask, **kwargs)


class Constant(OutputAdder):
    method = "constant"

    def __init__(self, c):
        super().__init__()
        self.c = c

    def delta(self, module, query, scaling):
        b, h, q, d = query.shape
        return torch.full((b, q, h, d), self.c, dtype=query.dtype)


def kv_heads_dim(model, family):
    if family.name == "llama":
        c = model.config
        return c.num_key_value_heads, c.hidden_size // c.num_attention_heads
    return model.config.num_heads, model.config.d_kv


def with_rows(family_name, impl, kinds=("self", "cross"), seed=0):
    model = build(family_name, impl)
    family = family_of(model)
    heads, dim = kv_heads_dim(model, family)
    for i, (name, _) in enumerate(attention_modules(model, family, kinds=kinds)):
        attach(model, name, "rows", RandomRows(heads, dim, seed=seed + i))
    return model


@both
def test_kv_extender_sdpa_equals_eager(family, batches):
    """The extended mask is built two ways (bool for SDPA, additive for eager); T5 also extends
    its position_bias. Both paths must agree, with padding and without (mask-free SDPA path)."""
    batch = batches[family]
    sdpa, eager = with_rows(family, "sdpa"), with_rows(family, "eager")
    base = logits(build(family), batch)
    out = logits(sdpa, batch)
    assert (out - base).abs().max() > 1e-3  # the rows matter
    torch.testing.assert_close(out, logits(eager, batch), atol=1e-5, rtol=0)
    unpadded = {k: v[:1] for k, v in batch.items()}
    torch.testing.assert_close(logits(sdpa, unpadded), logits(eager, unpadded), atol=1e-5, rtol=0)


@both
@impls
def test_kv_extender_keeps_causality(family, impl, batches):
    """A token's output does not depend on later tokens when extra rows are attached (the SDPA
    path has to materialise a causal mask that is shifted by the extra rows)."""
    model = with_rows(family, impl)
    batch = {k: v[:1] for k, v in batches[family].items()}  # no padding: SDPA gets mask=None
    other = {k: v.clone() for k, v in batch.items()}
    key = "labels" if family == "t5" else "input_ids"  # decoder inputs come from T5's labels
    other[key][0, 3:] = 5
    a, b = logits(model, batch), logits(model, other)
    torch.testing.assert_close(a[:, :3], b[:, :3], atol=1e-6, rtol=0)
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-4


@both
def test_kv_extender_generate_matches_no_cache(family, batches):
    """Extra rows are added per call, never stored in the KV cache: greedy decoding with the cache
    gives the same scores as recomputing every step without it."""
    model = with_rows(family, "sdpa")
    batch = batches[family]
    kwargs = dict(input_ids=batch["input_ids"][:1], attention_mask=batch["attention_mask"][:1], max_new_tokens=4,
                  do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(**kwargs, use_cache=True)
        plain = model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached.sequences, plain.sequences)
    for x, y in zip(cached.scores, plain.scores):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


class GatedRows(RandomRows):
    """Rows with a third output: a factor per query, g_t = σ(0.7 t - 2), or one constant per example."""

    def __init__(self, heads, dim, constant=None, seed=0):
        super().__init__(heads, dim, seed=seed)
        self.constant = constant

    def extra_kv(self, module, key):
        k, v = super().extra_kv(module, key)
        b, q = key.shape[0], key.shape[2]  # no cache here: as many keys as queries
        if self.constant is not None:
            return k, v, torch.full((b, 1, 1, 1), self.constant, dtype=key.dtype)
        g = torch.sigmoid(0.7 * torch.arange(q, dtype=key.dtype) - 2)
        return k, v, g.view(1, 1, q, 1).expand(b, 1, q, 1)


@both
@impls
def test_a_gate_per_query_is_the_attention_over_rows_scaled_for_that_query(family, impl, batches):
    """Query t sees g_t k and g_t v on the gated rows (UniPELT's causal prefix gate). With one block
    (one decoder block on T5), position t's output depends on the gate at t alone, so it must equal
    the output of a call whose gate is g_t for every query, which scales the rows themselves."""
    layers = {"num_layers": 1, "num_decoder_layers": 1} if family == "t5" else {"num_hidden_layers": 1}
    batch = batches[family]

    def model_with(constant=None):
        model = BUILD[family](0, **layers)
        if impl != model.config._attn_implementation:
            model.set_attn_implementation(impl)
        fam = family_of(model)
        heads, dim = kv_heads_dim(model, fam)
        for i, (name, _) in enumerate(attention_modules(model, fam, stacks=("decoder",))):  # self: q = kv
            attach(model, name, "plain", RandomRows(heads, dim, p=2, seed=10 + i))  # ungated rows beside them
            attach(model, name, "gated", GatedRows(heads, dim, constant, seed=i))
        return model

    gated = logits(model_with(), batch)
    n = gated.shape[1]
    for t in range(n):
        g = float(torch.sigmoid(torch.tensor(0.7 * t - 2)))
        torch.testing.assert_close(gated[:, t], logits(model_with(g), batch)[:, t], atol=1e-5, rtol=0)
    assert (gated - logits(model_with(1.0), batch)).abs().max() > 1e-3  # the gates matter


@both
def test_core_receives_the_documented_call(family, batches):
    batch = batches[family]
    model = with_rows(family, "sdpa", kinds=("self",))
    family_t = family_of(model)
    (name, attn), *_ = attention_modules(model, family_t)
    core = Recorder()
    attach(model, name, "core", core)
    reference = logits(with_rows(family, "sdpa", kinds=("self",)), batch)
    torch.testing.assert_close(logits(model, batch), reference, atol=0, rtol=0)
    (call,) = core.calls
    b, q = batch["input_ids"].shape
    heads, dim = kv_heads_dim(model, family_t)
    assert call["n_extra"] == 3 and call["k"] == (b, heads, 3 + q, dim)
    assert call["mask"].dtype == torch.bool and call["mask"].shape[-1] == 3 + q
    assert call["mask"][..., :3].all()  # extra rows visible to every query
    assert call["is_causal"] == (family == "llama")
    if family == "t5":
        assert call["bias"].shape[-1] == 3 + q and (call["bias"][..., :3] == 0).all()


def test_two_cores_name_both_methods(tiny_llama):
    model = tiny_llama()
    name = attention_modules(model, family_of(model))[0][0]
    attach(model, name, "sparse", Recorder("s2_attn"))
    with pytest.raises(ModelError, match="strided.*s2_attn"):
        attach(model, name, "strided", Recorder("strided"))


@both
def test_output_adders_sum(family, batches):
    batch = batches[family]
    model = build(family)
    base = logits(model, batch)
    fam = family_of(model)
    for name, _ in attention_modules(model, fam):
        attach(model, name, "zero", Constant(0.0))
    assert torch.equal(logits(model, batch), base)
    for name, _ in attention_modules(model, fam):
        attach(model, name, "one", Constant(1.0))
    assert (logits(model, batch) - base).abs().max() > 1e-3
    assert [type(e).__name__ for e in extensions(model.get_submodule(name)).out] == ["Constant", "Constant"]


def test_extension_parameters_have_stable_names(tiny_t5):
    model = with_rows("t5", "sdpa")
    names = {n for n, _ in model.named_parameters()}
    assert "encoder.block.0.layer.0.SelfAttention.rows.key" in names
    assert "decoder.block.1.layer.1.EncDecAttention.rows.value" in names


def test_deepcopy_carries_the_extension_tables(llama_batch):
    model = with_rows("llama", "sdpa")
    twin = copy.deepcopy(model)
    for (_, a), (_, b) in zip(attention_modules(model, family_of(model)), attention_modules(twin, family_of(twin))):
        assert extensions(b).kv[0] is b.rows and extensions(a).kv[0] is a.rows
    with torch.no_grad():
        twin.model.layers[0].self_attn.rows.value.zero_()
    assert (logits(twin, llama_batch) - logits(model, llama_batch)).abs().max() > 1e-4


def test_a_failed_apply_restores_the_attention_implementation(tiny_llama):
    from peftlab.methods.base import MethodConfig

    class AttachesThenFails(MethodConfig):
        name = "attaches_then_fails"

        def apply(self, model, family):
            name = attention_modules(model, family)[0][0]
            attach(model, name, "rows", RandomRows(2, 8))
            raise ModelError("boom")

    model = tiny_llama()
    with pytest.raises(ModelError, match="boom"):
        apply_methods(model, [LoraConfig(r=2), AttachesThenFails()])
    assert model.config._attn_implementation == "sdpa" and peft_state(model) is None
    assert not any(EXTENSIONS in m.__dict__ for m in model.modules())


@both
def test_rows_still_apply_after_another_function_took_a_hook_name(family, batches):
    """Regression (CI of stop 19): the fast-dropout attention was registered as "peftlab_sdpa" too,
    so in a process that had used it first, the hook was never registered and every prefix row was
    silently ignored. Now the two names differ, and a hook name held by any other function is
    taken back when a method attaches."""
    from transformers import AttentionInterface

    from peftlab.kernels import ops as kernels

    batch = batches[family]
    expected = logits(with_rows(family, "sdpa"), batch)
    other = build(family, "sdpa")
    assert kernels.use_fast_attention_dropout(other)
    assert other.config._attn_implementation == kernels.ATTENTION != "peftlab_sdpa"
    torch.testing.assert_close(logits(with_rows(family, "sdpa"), batch), expected, atol=0, rtol=0)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("peftlab_sdpa", sdpa_attention_forward)  # someone else's function
    torch.testing.assert_close(logits(with_rows(family, "sdpa"), batch), expected, atol=0, rtol=0)


@both
def test_the_training_levers_attention_runs_under_the_hook(family, batches):
    """``kernels.use_fast_attention`` on a model whose methods hold the hook on SDPA: every attention
    module computes its core with the levers' function (the extensions around it), the same logits
    in eval (where it is SDPA), and in training with dropout the rows still apply (a model without
    them differs)."""
    from peftlab.methods.hooks.attention import SDPA_BASE
    from peftlab.kernels import ops as kernels

    batch = batches[family]
    model = with_rows(family, "sdpa")
    expected = logits(model, batch)
    assert kernels.use_fast_attention(model, drop=True, blocks=True)
    modules = attention_modules(model, family_of(model), kinds=("self", "cross"))
    assert modules and all(m.__dict__.get(SDPA_BASE) is not None for _, m in modules)
    assert model.config._attn_implementation == "peftlab_sdpa"
    assert torch.equal(logits(model, batch), expected)
    plain = build(family, "sdpa")
    for m in (model, plain):
        m.config.dropout_rate = m.config.attention_dropout = 0.5
        for module in m.modules():
            if hasattr(module, "attention_dropout"):
                module.attention_dropout = 0.5
            if hasattr(module, "dropout") and isinstance(module.dropout, float):
                module.dropout = 0.5
        m.train()
    torch.manual_seed(0)
    out = model(**batch).logits
    assert torch.isfinite(out).all() and not torch.allclose(out, plain(**batch).logits, atol=1e-3)
    assert not kernels.use_fast_attention(model)  # neither lever: nothing to switch
