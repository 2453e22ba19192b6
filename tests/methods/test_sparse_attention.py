"""Sparse attention for fine-tuning (peftlab/methods/s2_attn.py, strided.py, sparse_attention.py):
each pattern against dense attention under an explicit boolean mask of the same pattern (outputs
and gradients), causality by perturbation, padding on either side, dense evaluation, composition
with LoRA / LLaMA-Adapter / prefix tuning, bf16, export, errors, and no n×n allocation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftlab.config import from_dict
from peftlab.errors import ConfigError, ModelError
from peftlab.methods import MethodConfig, apply_methods
from peftlab.methods.hooks.attention import AttentionCore, attach, attention_modules, extensions
from peftlab.methods.export import export_peft, merged_model
from peftlab.methods.llama_adapter import SLOT as PROMPT, LlamaAdapterConfig
from peftlab.methods.llama_adapter_v2 import LlamaAdapterV2Config
from peftlab.methods.lora import LoraConfig
from peftlab.methods.prefix import PrefixConfig
from peftlab.methods.s2_attn import S2AttnConfig, ShiftedSparseAttention
from peftlab.methods.strided import StridedConfig, StridedSparseAttention
from peftlab.models.arch import family_of

from conftest import VOCAB, build_llama, build_t5, logits

N = 24  # tokens: 3 groups of G=8 (shift 4); strided l=4, s=5 leaves most pairs out
S2 = dict(group_size=8)
STRIDED = dict(window=4, stride=5)


# ------------------------------------------------------------------------------------------------
# The patterns, written from their definitions (positions counted from a row's first real token)
# ------------------------------------------------------------------------------------------------
def s2_allowed(i, j, head, heads, n, size):
    causal = j <= i
    if size >= n:
        return causal
    shift = size // 2
    plain = i.div(size, rounding_mode="floor") == j.div(size, rounding_mode="floor")
    shifted = (i + size - shift).div(size, rounding_mode="floor") == (j + size - shift).div(size, rounding_mode="floor")
    return causal & torch.where(head >= heads // 2, shifted, plain)


def strided_allowed(i, j, head, heads, n, window, stride):
    return (j <= i) & ((i - j < window) | (j % stride == stride - 1))


def pattern_of(method, **kw):
    if method == "s2_attn":
        return lambda i, j, h, H, n: s2_allowed(i, j, h, H, n, kw["group_size"])
    return lambda i, j, h, H, n: strided_allowed(i, j, h, H, n, kw["window"], kw["stride"])


def reference(query, key, value, allowed, extra=None):
    """Dense SDPA under the explicit ``(B, H, n, n)`` mask ``allowed``; extra rows visible to all."""
    rep = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    if extra is not None:
        k = torch.cat([extra[0].repeat_interleave(rep, 1), k], 2)
        v = torch.cat([extra[1].repeat_interleave(rep, 1), v], 2)
        allowed = F.pad(allowed, (extra[0].shape[2], 0), value=True)
    return F.scaled_dot_product_attention(query, k, v, attn_mask=allowed).transpose(1, 2)  # (B, n, H, d)


def full_mask(pattern, batch, heads, n, keep=None):
    """The pattern as a dense mask, anchored at each row's first real token; padding keys hidden."""
    keep = torch.ones(batch, n, dtype=torch.bool) if keep is None else keep.bool()
    pos = torch.arange(n)[None] - keep.int().argmax(1)[:, None]  # (B, n)
    i, j = pos[:, None, :, None], pos[:, None, None, :]
    allowed = pattern(i, j, torch.arange(heads)[None, :, None, None], heads, n)
    return (allowed & keep[:, None, None, :]) | torch.eye(n, dtype=torch.bool)  # padding rows see themselves


class MaskedReference(AttentionCore):
    """A test core: dense SDPA under ``full_mask`` while training, stock attention otherwise."""

    method = "reference"

    def __init__(self, pattern, keep):
        super().__init__()
        self.pattern, self.keep = pattern, keep

    def attend(self, module, query, key, value, attention_mask, *, base, n_extra, is_causal, **kwargs):
        if not module.training:
            return base(module, query, key, value, attention_mask, **kwargs)
        b, h, n, _ = query.shape
        extra = (key[:, :, :n_extra], value[:, :, :n_extra]) if n_extra else None
        mask = full_mask(self.pattern, b, h, n, self.keep)
        out = reference(query, key[:, :, n_extra:], value[:, :, n_extra:], mask, extra)
        return out * self.keep[:, :, None, None], None  # padding queries: no attention output


def with_reference(model, pattern, keep):
    for name, _ in attention_modules(model, family_of(model)):
        attach(model, name, "reference", MaskedReference(pattern, keep))
    return model


def config(method, **kw):
    return S2AttnConfig(**kw) if method == "s2_attn" else StridedConfig(**kw)


METHODS = [("s2_attn", S2), ("strided", STRIDED)]
methods = pytest.mark.parametrize("method, kw", METHODS, ids=[m for m, _ in METHODS])


def batch_of(padding: str, n: int = N, real: int = 17):
    """Two rows of n tokens; the second has ``real`` real tokens, padded on the ``padding`` side."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, VOCAB, (2, n), generator=g)
    mask = torch.ones(2, n, dtype=torch.long)
    if padding == "right":
        mask[1, real:] = 0
    elif padding == "left":
        mask[1, :n - real] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def train_logits(model, batch):
    model.train()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# ------------------------------------------------------------------------------------------------
# The pattern against dense attention with an explicit mask
# ------------------------------------------------------------------------------------------------
SHAPES = [(2, 4, 2, 24), (1, 8, 4, 37), (2, 3, 1, 13), (1, 6, 3, 20)]  # (B, H, H_kv, n): GQA, odd heads, ragged n


@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}H{h}kv{k}n{n}" for b, h, k, n in SHAPES])
@pytest.mark.parametrize("method, kw", [("s2_attn", dict(group_size=g)) for g in (1, 2, 5, 8, 64)]
                         + [("strided", dict(window=w, stride=s))
                            for w, s in ((1, 1), (3, 4), (4, 7), (5, 2), (64, 3))],
                         ids=lambda x: str(x) if isinstance(x, str) else "-".join(map(str, x.values())))
@pytest.mark.parametrize("n_extra", [0, 3])
def test_pattern_equals_dense_attention_under_its_mask(shape, method, kw, n_extra):
    """Outputs and gradients (query, keys, values, prefix rows) match SDPA with the pattern's mask,
    for GQA, odd head counts, lengths that are not a multiple of the block, prefix rows."""
    b, h, hk, n = shape
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(b, x, m, 8, generator=g, requires_grad=True)
              for x, m in ((h, n), (hk, n), (hk, n), (hk, n_extra), (hk, n_extra))]
    q, k, v, ek, ev = leaves
    extra = (ek, ev) if n_extra else None
    core = ShiftedSparseAttention(kw["group_size"], 0.25) if method == "s2_attn" else \
        StridedSparseAttention(kw["window"], kw["stride"], False)
    out = core.pattern(q, k, v, extra, None, 0.0)
    expected = reference(q, k, v, full_mask(pattern_of(method, **kw), b, h, n), extra)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    weights = torch.randn(out.shape, generator=g)
    ours = torch.autograd.grad((out * weights).sum(), leaves[:3 + bool(n_extra) * 2])
    theirs = torch.autograd.grad((expected * weights).sum(), leaves[:3 + bool(n_extra) * 2])
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=0)


@methods
def test_pattern_never_allocates_n_squared(method, kw):
    """The whole point: at n = 4096 the core's peak allocation (forward + backward, masks included)
    stays below the size of one n×n bool mask (16 MiB), let alone of n×n scores; so no n×n tensor
    of any dtype hides behind the pattern."""
    from torch.profiler import ProfilerActivity, profile
    from torch._C._profiler import _EventType

    n = 4096
    q, k, v = (torch.randn(1, 2, n, 8, requires_grad=True) for _ in range(3))
    core = ShiftedSparseAttention(64, 0.25) if method == "s2_attn" else StridedSparseAttention(32, 128, False)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        core.pattern(q, k, v, None, None, 0.0).sum().backward()
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.typed[0] == _EventType.Allocation:
            peak = max(peak, node.typed[1].total_allocated)
    assert 0 < peak < n * n, f"peak {peak:,} bytes"  # measured: ~3 MB (S²), ~6 MB (strided)


# ------------------------------------------------------------------------------------------------
# On the model: reference, causality, padding, evaluation
# ------------------------------------------------------------------------------------------------
@methods
@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_model_equals_the_masked_reference(method, kw, padding, impl):
    """Train-mode logits and LoRA gradients equal a model whose attention is dense SDPA under the
    pattern's explicit mask, at every real position; under an SDPA (bool mask) or eager (additive
    mask) model alike."""
    batch = batch_of(padding)
    real = batch["attention_mask"].bool()
    results = []
    for make in (lambda m: apply_methods(m, [LoraConfig(r=2), config(method, **kw)]),
                 lambda m: (apply_methods(m, [LoraConfig(r=2)]),
                            with_reference(m, pattern_of(method, **kw), batch["attention_mask"]))[0]):
        model = build_llama()
        if impl == "eager":
            model.set_attn_implementation("eager")
        state = make(model)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_b" in name:
                    p.normal_(std=0.1)  # so the gradients of lora_a are not zero
        model.train()
        model(**batch).loss.backward()
        params = dict(model.named_parameters())
        results.append((train_logits(model, batch)[real], [params[n].grad for n in state.trainable_names()]))
    (ours, our_grads), (expected, their_grads) = results
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert (ours - logits(build_llama(), batch)[real]).abs().max() > 1e-3  # the pattern matters
    for a, e in zip(our_grads, their_grads):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=0)


@methods
@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("cut", [3, 12, 16, 20])
def test_no_token_depends_on_a_later_one(method, kw, padding, cut):
    """Perturb every token after ``cut``: earlier outputs are unchanged, later ones change. With
    G = 8 and n = 24, LongLoRA's roll would wrap tokens 0-3 of the shifted heads behind tokens
    20-23; cut=20 catches that."""
    model = build_llama()
    apply_methods(model, [config(method, **kw)])
    batch = batch_of(padding)
    other = {k: v.clone() for k, v in batch.items()}
    first = int(batch["attention_mask"][1].argmax())  # row 1's first real token
    later = torch.zeros(2, N, dtype=torch.bool)
    later[0, cut:], later[1, first + cut:] = True, True
    later &= batch["attention_mask"].bool()
    other["input_ids"][later] = (other["input_ids"][later] + 7) % (VOCAB - 2) + 2
    a, b = train_logits(model, batch), train_logits(model, other)
    torch.testing.assert_close(a[0, :cut], b[0, :cut], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[1, :first + cut], b[1, :first + cut], atol=1e-6, rtol=0)  # padding too
    assert (a[0, cut:] - b[0, cut:]).abs().max() > 1e-4
    if later[1].any():
        assert (a[1, first + cut:] - b[1, first + cut:]).abs().max() > 1e-4


@pytest.mark.parametrize("upper", [False, True], ids=["unshifted-heads", "shifted-heads"])
@pytest.mark.parametrize("n", [24, 21])
def test_each_half_of_the_heads_is_causal(upper, n):
    """Per head, on the core: changing keys/values after position t leaves outputs up to t as they were."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, n, 8, generator=g) for _ in range(3))
    core, heads = ShiftedSparseAttention(8, 0.25), slice(2, 4) if upper else slice(0, 2)
    base = core.pattern(q, k, v, None, None, 0.0)
    for t in range(n - 1):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, t + 1:] += 1.0
        v2[:, :, t + 1:] -= 1.0
        out = core.pattern(q, k2, v2, None, None, 0.0)
        torch.testing.assert_close(out[:, :t + 1, heads], base[:, :t + 1, heads], atol=1e-6, rtol=0)


@methods
def test_a_left_padded_row_equals_the_row_alone(method, kw):
    """The pattern is anchored at each row's first real token, so padding does not move it."""
    model = build_llama()
    apply_methods(model, [config(method, **kw)])
    batch = batch_of("left")
    alone = {k: v[1:, N - 17:] for k, v in batch.items()}
    torch.testing.assert_close(train_logits(model, batch)[1, N - 17:], train_logits(model, alone)[0],
                               atol=1e-5, rtol=0)


@methods
def test_one_group_or_window_over_the_whole_sequence_is_dense(method, kw):
    wide = dict(group_size=N) if method == "s2_attn" else dict(window=N, stride=3)
    model, base = build_llama(), build_llama()
    apply_methods(model, [config(method, **wide)])
    for padding in ("none", "right", "left"):
        batch = batch_of(padding)
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(train_logits(model, batch)[real], train_logits(base, batch)[real],
                                   atol=1e-5, rtol=0)
    s2 = build_llama()
    apply_methods(s2, [S2AttnConfig(group_fraction=1.0)])
    torch.testing.assert_close(train_logits(s2, batch_of("none")), train_logits(base, batch_of("none")),
                               atol=1e-5, rtol=0)


@methods
def test_evaluation_and_generate_are_dense(method, kw):
    """S²-Attn (and strided by default) attend densely in eval mode and generate: the base model's
    outputs exactly, and the trained LoRA runs without the pattern."""
    model, base = build_llama(), build_llama()
    apply_methods(model, [config(method, **kw)])
    batch = batch_of("left")
    assert torch.equal(logits(model, batch), logits(base, batch))
    assert (train_logits(model, batch) - train_logits(base, batch)).abs().max() > 1e-3
    model.eval(), base.eval()
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4,
                  do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(**kwargs), base.generate(**kwargs))


def test_strided_at_inference_generates_as_it_trains():
    """``inference: true``: eval logits are the pattern's (= train mode), and greedy decoding with the
    KV cache (the pattern as a mask over the cache) gives the scores of recomputing every step."""
    model = build_llama()
    apply_methods(model, [StridedConfig(inference=True, **STRIDED)])
    batch = batch_of("left")
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits(model.eval(), batch)[real], train_logits(model, batch)[real],
                               atol=1e-6, rtol=0)
    assert (logits(model.eval(), batch) - logits(build_llama(), batch))[real].abs().max() > 1e-3
    model.eval()
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6,
                  do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        cached, plain = model.generate(**kwargs, use_cache=True), model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached.sequences, plain.sequences)
    for x, y in zip(cached.scores, plain.scores):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# Composition
# ------------------------------------------------------------------------------------------------
def step(model, batch, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    model.train()
    loss = model(**batch).loss
    loss.backward()
    torch.optim.SGD(params, lr=lr).step()
    assert torch.isfinite(loss) and all(p.grad is not None for p in params)
    assert any(not torch.equal(a, p) for a, p in zip(before, params))


@methods
@pytest.mark.parametrize("adapter", [LlamaAdapterConfig, LlamaAdapterV2Config], ids=["v1", "v2"])
def test_with_llama_adapter(method, kw, adapter):
    """The adapter's gated prompt attention is added on top of the sparse core: with a group/window
    over the whole sequence the model is the adapter's own; with a short one it differs; a step trains."""
    wide = dict(group_size=N) if method == "s2_attn" else dict(window=N, stride=3)
    batch = batch_of("right")
    real = batch["attention_mask"].bool()
    outs = []
    for sparse in (None, config(method, **wide), config(method, **kw)):
        model = build_llama()
        apply_methods(model, [LoraConfig(r=2), adapter(length=3, layers=2)] + ([sparse] if sparse else []))
        with torch.no_grad():
            for layer in model.model.layers:
                getattr(layer.self_attn, PROMPT).gate.fill_(0.5)
        outs.append(train_logits(model, batch)[real])
        if sparse is not None:
            table = extensions(model.model.layers[0].self_attn)
            assert table.core is not None and len(table.out) == 1
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)
    assert (outs[2] - outs[0]).abs().max() > 1e-3
    step(model, batch)


@methods
def test_prefix_rows_are_visible_to_every_block(method, kw):
    """Decision: prefix tuning's rows are global context; every query of every group/block attends
    to them, as in dense attention (the reference mask opens the prefix columns to all queries)."""
    batch = batch_of("right")
    real = batch["attention_mask"].bool()
    outs = []
    for sparse in (True, False):
        model = build_llama()
        apply_methods(model, [PrefixConfig(length=3)] + ([config(method, **kw)] if sparse else []))
        if not sparse:
            with_reference(model, pattern_of(method, **kw), batch["attention_mask"])
        outs.append(train_logits(model, batch)[real])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)
    step(model, batch)


@methods
def test_bf16_autocast_and_gradient_checkpointing(method, kw):
    batch = batch_of("left")
    real = batch["attention_mask"].bool()
    grads = []
    for checkpointing in (False, True):
        model = build_llama()
        state = apply_methods(model, [LoraConfig(r=2), config(method, **kw)])
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_b" in name:
                    p.normal_(std=0.1)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(**batch).loss.backward()
        params = dict(model.named_parameters())
        grads.append([params[n].grad for n in state.trainable_names()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    model.zero_grad()
    full = train_logits(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(params[n].grad is not None and params[n].grad.dtype == torch.float32 for n in state.trainable_names())
    torch.testing.assert_close(out.logits.float()[real], full[real], atol=0.1, rtol=0)  # bf16: ~3 digits


def test_longlora_embeddings_and_norms_option():
    model = build_llama()
    state = apply_methods(model, [LoraConfig(r=2), S2AttnConfig(train_embeddings=True, train_norms=True, **S2)])
    names = set(state.param_names["s2_attn"])
    assert "model.embed_tokens.weight" in names and "model.norm.weight" in names
    assert "model.layers.1.post_attention_layernorm.weight" in names and "lm_head.weight" not in names
    step(model, batch_of("right"))
    with pytest.raises(ModelError, match="both claim one parameter"):  # v2 unfreezes the norms too
        apply_methods(build_llama(), [LlamaAdapterV2Config(length=2), S2AttnConfig(train_norms=True)])


# ------------------------------------------------------------------------------------------------
# Export, layers, errors, configs
# ------------------------------------------------------------------------------------------------
def test_lora_trained_with_s2_attn_exports_and_merges_as_plain_lora(tmp_path):
    from peft import PeftModel

    model = build_llama()
    apply_methods(model, [LoraConfig(r=2), S2AttnConfig(**S2)])
    step(model, batch_of("right"))
    batch = batch_of("left")
    expected = logits(model.eval(), batch)
    export_peft(model, tmp_path, "tiny-llama")
    theirs = PeftModel.from_pretrained(build_llama(), tmp_path)
    torch.testing.assert_close(logits(theirs, batch), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(merged_model(model), batch), expected, atol=1e-5, rtol=0)


def test_strided_at_inference_is_not_exported(tmp_path):
    model = build_llama()
    apply_methods(model, [LoraConfig(r=2), StridedConfig(inference=True)])
    with pytest.raises(ModelError, match="strided"):
        export_peft(model, tmp_path, "tiny-llama")


def test_layers_pick_the_blocks():
    model = build_llama(num_hidden_layers=3)
    apply_methods(model, [S2AttnConfig(layers=(0, 2))])
    assert [extensions(layer.self_attn).core is not None for layer in model.model.layers] == [True, False, True]
    with pytest.raises(ModelError, match=r"layers \[3\] do not exist \(the model has 3 blocks\)"):
        apply_methods(build_llama(num_hidden_layers=3), [StridedConfig(layers=(1, 3))])


def test_two_sparse_patterns_name_both():
    with pytest.raises(ModelError, match="strided and s2_attn both replace"):
        apply_methods(build_llama(), [S2AttnConfig(), StridedConfig()])


@methods
def test_t5_is_refused_because_its_encoder_is_not_causal(method, kw):
    with pytest.raises(ModelError, match=rf"{method}: the t5 family is not supported: .*encoder is not"):
        apply_methods(build_t5(), [config(method, **kw)])


def test_a_mask_that_is_not_causal_plus_padding_is_refused():
    """Packed sequences (position ids restarting, no attention mask, no cache) give a block-diagonal mask;
    sparse attention says so instead of silently ignoring it."""
    model = build_llama()
    apply_methods(model, [S2AttnConfig(**S2)])
    ids = batch_of("none")["input_ids"]
    position_ids = torch.cat([torch.arange(10), torch.arange(N - 10)])[None].expand(2, -1)
    model.train()
    with pytest.raises(ModelError, match="not causal \\+ padding"):
        model(input_ids=ids, position_ids=position_ids, use_cache=False)


@pytest.mark.parametrize("make, field", [
    (lambda: S2AttnConfig(group_size=-1), "group_size"),
    (lambda: S2AttnConfig(group_fraction=0.0), "group_fraction"),
    (lambda: S2AttnConfig(group_fraction=1.5), "group_fraction"),
    (lambda: StridedConfig(window=0), "window"),
    (lambda: StridedConfig(stride=0), "stride"),
    (lambda: StridedConfig(layers=(-1,)), "layers"),
    (lambda: S2AttnConfig(layers=(1, 1)), "layers"),
])
def test_config_errors_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_configs_from_yaml_data():
    cfg = from_dict(MethodConfig, {"name": "s2_attn", "group_size": 64, "layers": [0, 1], "train_norms": True})
    assert cfg == S2AttnConfig(group_size=64, layers=(0, 1), train_norms=True)
    assert from_dict(MethodConfig, cfg.to_dict()) == cfg
    assert from_dict(MethodConfig, {"name": "strided", "window": 32}).describe() == "strided l=32 s=128"
    with pytest.raises(ConfigError, match="window must be >= 1"):
        from_dict(MethodConfig, {"name": "strided", "window": 0})
