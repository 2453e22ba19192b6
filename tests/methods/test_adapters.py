"""Bottleneck adapters (Houlsby, Pfeiffer, parallel), AdapterDrop and IA3 beyond the contract table:
the equations on one sub-layer, AdapterDrop's untouched lowest blocks, generation with a cache,
gradient checkpointing, bf16, deep copies, composition conflicts and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from peftlab.errors import ModelError
from peftlab.methods import apply_methods
from peftlab.methods.hooks.bottleneck import BottleneckAdapter
from peftlab.methods.export import export_peft, merged_model
from peftlab.methods.houlsby import HoulsbyConfig
from peftlab.methods.ia3 import IA3Config, IA3Linear
from peftlab.methods.lora import LoraConfig, LoraLinear
from peftlab.methods.parallel import ParallelAdapterConfig
from peftlab.methods.pfeiffer import PfeifferConfig

from conftest import build_llama, build_t5, logits

BOTTLENECKS = [HoulsbyConfig(), PfeifferConfig(), ParallelAdapterConfig(sublayers=("self", "ffn"))]
ids = pytest.mark.parametrize("cfg", BOTTLENECKS, ids=lambda c: c.name)


def adapters(model) -> dict[str, BottleneckAdapter]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BottleneckAdapter)}


def randomize(model, std=0.2):
    """Move every trainable parameter away from its (identity) init."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)
    return model


@ids
def test_equation_on_one_t5_ffn_sublayer(cfg):
    """layer(h) for T5's FFN sub-layer equals the method's equation computed by hand."""
    model = build_t5()
    apply_methods(model, [cfg])
    randomize(model)
    layer = model.encoder.block[0].layer[-1]  # T5LayerFF: h + dropout(DenseReluDense(layer_norm(h)))
    adapter = getattr(layer, f"{cfg.name}_ffn")
    h = torch.randn(2, 3, 32)
    with torch.no_grad():
        y = layer.DenseReluDense(layer.layer_norm(h))

        def a(x):
            return cfg.scaling * adapter.up(adapter.act(adapter.down(x)))

        expected = {"houlsby": h + y + a(y), "pfeiffer": h + y + a(h + y), "parallel": h + y + a(h)}[cfg.name]
        torch.testing.assert_close(layer(h), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_adapterdrop_leaves_the_lowest_blocks_as_the_base(family, request):
    """No adapter (module or hook) in the lowest n blocks of each stack; block 0 computes what the
    base model computes even with trained adapters above it."""
    from peftlab.models.arch import family_of

    build = build_t5 if family == "t5" else build_llama
    batch = request.getfixturevalue(f"{family}_batch")
    base, model = build(), build()
    apply_methods(model, [HoulsbyConfig(drop_lowest=1)])
    randomize(model)
    fam = family_of(model)
    for stack, i, block in fam.blocks(model):
        assert bool(adapters(block)) == (i >= 1), (stack, i)
        hooked = [m for m in block.modules() if m._forward_hooks or m._forward_pre_hooks]
        assert bool(hooked) == (i >= 1), (stack, i)
    with torch.no_grad():
        ours = model(**batch, output_hidden_states=True)
        theirs = base(**batch, output_hidden_states=True)
    # (T5's decoder block 0 reads the adapted encoder's output through cross-attention, so only the
    # first stack's block 0 is the base's all through)
    key = "encoder_hidden_states" if family == "t5" else "hidden_states"
    torch.testing.assert_close(getattr(ours, key)[1], getattr(theirs, key)[1], atol=1e-6, rtol=0)  # block 0
    assert (getattr(ours, key)[2] - getattr(theirs, key)[2]).abs().max() > 1e-3  # block 1 is adapted


@pytest.mark.parametrize("family", ["t5", "llama"])
@ids
def test_generate_with_cache_matches_without(cfg, family, request):
    """Incremental decoding (the residual h recorded per step) gives the same scores as full passes."""
    batch = request.getfixturevalue(f"{family}_batch")
    model = build_t5() if family == "t5" else build_llama()
    apply_methods(model, [cfg])
    randomize(model)
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4,
                  do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(**kwargs, use_cache=True)
        full = model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached.sequences, full.sequences)
    for a, b in zip(cached.scores, full.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")  # the loop's call
@ids
def test_gradient_checkpointing_gives_the_same_gradients(cfg, t5_batch):
    def grads(checkpointing):
        model = build_t5()
        apply_methods(model, [cfg])
        randomize(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**t5_batch).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("family", ["t5", "llama"])
@pytest.mark.parametrize("cfg", BOTTLENECKS + [IA3Config()], ids=lambda c: c.name)
def test_bf16_autocast_and_bf16_base(cfg, family, request):
    batch = request.getfixturevalue(f"{family}_batch")
    build = build_t5 if family == "t5" else build_llama
    model = build()
    apply_methods(model, [cfg])
    randomize(model, std=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    half = build().to(torch.bfloat16)  # a bf16 base with fp32 methods, no autocast
    apply_methods(half, [cfg])
    with torch.no_grad():
        out = half(**batch).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_deep_copy_runs_its_own_adapters(t5_batch):
    model = build_t5()
    apply_methods(model, [ParallelAdapterConfig()])
    randomize(model)
    before = logits(model, t5_batch)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for a in adapters(twin).values():
            a.up.weight.zero_()
            a.up.bias.zero_()
    torch.testing.assert_close(logits(twin, t5_batch), logits(build_t5(), t5_batch), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(model, t5_batch), before, atol=0, rtol=0)


def test_init_modes():
    def weights(init):
        model = build_t5(d_model=64)
        apply_methods(model, [HoulsbyConfig(init=init, reduction_factor=2)])
        a = next(iter(adapters(model).values()))
        return a.down.weight, a.up.weight, a.up.bias

    down, up, bias = weights("zero_up")
    assert down.abs().max() > 0 and not up.any() and not bias.any()
    down, up, _ = weights("houlsby")  # the paper: near-identity, truncated normal std 1e-2
    assert 0 < down.abs().max() <= 2e-2 and 0 < up.abs().max() <= 2e-2
    down, up, _ = weights("bert")  # AdapterHub's default: normal std 0.02
    assert 0.01 < down.std() < 0.03 and 0.01 < up.std() < 0.03


def test_lora_all_linear_leaves_adapter_layers_alone(tiny_t5):
    """LoRA after a bottleneck adapter wraps the base's linears, never the adapter's own down/up."""
    model = tiny_t5()
    state = apply_methods(model, [HoulsbyConfig(), LoraConfig(r=2, targets=("all-linear",))])
    for a in adapters(model).values():
        assert type(a.down) is nn.Linear and type(a.up) is nn.Linear
    plain = tiny_t5()
    assert state.counts(model)["lora"] == apply_methods(plain, [LoraConfig(r=2, targets=("all-linear",))]).counts(plain)["lora"]


def test_two_methods_wrapping_one_linear_are_refused_by_name(tiny_t5):
    with pytest.raises(ModelError, match=r"ia3: .*SelfAttention\.v is already wrapped by another method \(LoraLinear\)"):
        apply_methods(tiny_t5(), [LoraConfig(r=2, targets=("v",)), IA3Config()])
    with pytest.raises(ModelError, match=r"lora: .*\.k is already wrapped \(IA3Linear\)"):
        apply_methods(tiny_t5(), [IA3Config(), LoraConfig(r=2, targets=("k",))])
    model = tiny_t5()
    apply_methods(model, [LoraConfig(r=2, targets=("q",)), IA3Config()])  # other layers: fine
    assert any(isinstance(m, LoraLinear) for m in model.modules()) and any(isinstance(m, IA3Linear) for m in model.modules())


def test_the_same_bottleneck_twice_is_refused(tiny_t5):
    with pytest.raises(ModelError, match="already has a houlsby adapter on ffn"):
        apply_methods(tiny_t5(), [HoulsbyConfig(sublayers=("ffn",)), HoulsbyConfig()])


@pytest.mark.parametrize(
    "family, cfg, match",
    [
        ("t5", PfeifferConfig(drop_lowest=2), r"drop_lowest=2 leaves no adapter in the (encoder|decoder)'s 2 blocks"),
        ("t5", HoulsbyConfig(layers=(0, 5)), r"layers \[0, 5\] out of range: the (encoder|decoder) has 2 blocks"),
        ("llama", HoulsbyConfig(sublayers=("self", "cross")), r"houlsby: sublayers \['cross'\] do not exist in llama"),
        ("t5", ParallelAdapterConfig(stacks=("encdoer",)), "unknown stack 'encdoer'"),
        ("llama", IA3Config(targets=("wo",), feedforward=("wo",)), "ia3: targets .* match no linear layer"),
    ],
)
def test_placement_errors_name_the_field(family, cfg, match):
    with pytest.raises(ModelError, match=match):
        apply_methods(build_t5() if family == "t5" else build_llama(), [cfg])


def test_export_refuses_bottleneck_adapters_by_name(tiny_t5, tmp_path):
    model = tiny_t5()
    apply_methods(model, [IA3Config(), PfeifferConfig()])
    with pytest.raises(ModelError, match="holds one method; this model has ia3, pfeiffer"):
        export_peft(model, tmp_path / "x", "tiny")
    with pytest.raises(ModelError, match="has ia3 and also has pfeiffer .pfeiffer: its bottleneck adapters"):
        merged_model(model)


def test_ia3_merged_model_is_a_plain_hf_model(tmp_path, tiny_t5, t5_batch):
    from transformers import T5ForConditionalGeneration

    model = tiny_t5()
    apply_methods(model, [IA3Config()])
    randomize(model)
    expected = logits(model, t5_batch)
    merged = merged_model(model)
    merged.save_pretrained(tmp_path / "m")
    again = T5ForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(logits(again, t5_batch), expected, atol=1e-5, rtol=0)


def test_a_failed_apply_removes_adapters_and_hooks(tiny_t5, t5_batch):
    model = tiny_t5()
    before = logits(model, t5_batch)
    with pytest.raises(ModelError, match="query"):
        apply_methods(model, [ParallelAdapterConfig(sublayers=("self", "ffn")), IA3Config(), LoraConfig(targets=("query",))])
    assert not adapters(model) and not any(isinstance(m, IA3Linear) for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(logits(model, t5_batch), before, atol=0, rtol=0)
