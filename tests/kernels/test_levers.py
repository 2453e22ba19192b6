"""The speed levers train the same weights as the plain path (peftlab.train.fast, LoRA's fused
forward/backward): a few optimizer steps on tiny models along both, losses and adapter weights
compared within stated tolerances. Speed itself is the benchmark's business, never a unit test's.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from peftlab.methods import apply_methods
from peftlab.methods.alignment import AlignmentConfig
from peftlab.methods.full import FullFineTuneConfig
from peftlab.methods.lora import LoraConfig, LoraLinear
from peftlab.methods.p_tuning import PTuningConfig
from peftlab.methods.prefix import PrefixConfig
from peftlab.methods.prompt_tuning import PromptTuningConfig
from peftlab.schema import TrainSpec
from peftlab.train import fast

from conftest import build_llama, build_t5

PLAIN = TrainSpec(fused_kernels=False, compile=False, loss_chunk=None)
# fp32: the levers only reorder roundings, so losses and weights agree to float32 noise, which Adam
# (a step of ~lr / sqrt(v)) amplifies where a gradient is near zero: atol is 1% of one step (lr 1e-2).
FP32_TOL = dict(rtol=1e-4, atol=1e-4)
# bf16 autocast rounds the plain path's pieces separately and the fused path's once, and Adam turns
# any gradient difference into a step of ~lr: there the optimised path's losses and weights must stay
# as close to the fp32 plain path's as the plain bf16 path's are (within BF16_SLACK x; for the losses
# at least BF16_LOSS_RTOL of them).
BF16_SLACK, BF16_LOSS_RTOL = 2.0, 3e-3


def _batch(family: str) -> dict:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(2, 128, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    if family == "t5":
        labels = torch.randint(2, 128, (3, 5), generator=g)
        labels[1, 3:] = -100
    else:
        labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _model(family: str, methods, **config):
    model = (build_t5 if family == "t5" else build_llama)(seed=0, **config)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        apply_methods(model, methods)
    for m in model.modules():  # B = 0 at init would hide the update's own path for a step
        if isinstance(m, LoraLinear):
            with torch.no_grad():
                m.lora_b.normal_(0, 0.05, generator=torch.Generator().manual_seed(m.lora_a.shape[1]))
    return model


def _train(model, spec: TrainSpec, batch, steps=4):
    """(losses, trained weights, the first step's gradients)."""
    loss_of = fast.training_loss(model, spec)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    losses, first_grads = [], None
    for i in range(steps):
        torch.manual_seed(100 + i)  # the same dropout masks along both paths
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.mixed_precision == "bf16"):
            loss = loss_of(batch)
        loss.backward()
        if first_grads is None:
            first_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, first_grads


def _llama_adapter(**kw):
    from peftlab.methods.llama_adapter import LlamaAdapterConfig

    return LlamaAdapterConfig(**kw)


CASES = {  # id -> (family, methods, model config overrides)
    "lora-t5": ("t5", lambda: [LoraConfig(r=4, alpha=12, targets=("q", "v", "wo"))], {}),
    "lora-dropout+alignment-t5": ("t5", lambda: [LoraConfig(r=4, alpha=8, dropout=0.1), AlignmentConfig()], {}),
    "lora-all-linear-llama": ("llama", lambda: [LoraConfig(r=4, alpha=6, targets=("all-linear",))], {}),
    "full-untied-t5": ("t5", lambda: [FullFineTuneConfig()], {"tie_word_embeddings": False}),
    "full-tied-t5": ("t5", lambda: [FullFineTuneConfig()], {"tie_word_embeddings": True}),  # head = embedding, scaled input
    "p-tuning-llama": ("llama", lambda: [PTuningConfig(num_virtual_tokens=3, hidden=8)], {}),
    "prompt-tuning-t5": ("t5", lambda: [PromptTuningConfig(num_virtual_tokens=3)], {}),
    "prefix-llama": ("llama", lambda: [PrefixConfig(length=3, projection=8)], {}),
    "llama-adapter-llama": ("llama", lambda: [_llama_adapter(layers=2, length=3)], {}),
}


def _distance(a: dict, b: dict) -> float:
    return float(torch.cat([(a[n] - b[n]).flatten() for n in b]).norm())


def _compare(case, fast_spec: TrainSpec, precision: str):
    family, methods, config = CASES[case]
    batch = _batch(family)

    def run(spec, mixed):
        return _train(_model(family, methods(), **config), dataclasses.replace(spec, mixed_precision=mixed), batch)

    plain_losses, plain_w, plain_g = run(PLAIN, "no")
    assert plain_losses[-1] < plain_losses[0], "the plain path did not train"
    fast_losses, fast_w, fast_g = run(fast_spec, precision)
    assert fast_w.keys() == plain_w.keys()
    if precision == "no":
        torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(plain_losses), **FP32_TOL)
        # full fine-tuning has near-zero gradients (embedding rows of tokens barely used) whose float32
        # noise Adam's first steps turn into steps of ~lr: there the gradients are compared, tightly
        full = any(m.trains_base for m in methods())
        got, want = (fast_g, plain_g) if full else (fast_w, plain_w)
        for name in want:
            torch.testing.assert_close(got[name], want[name], **FP32_TOL, msg=lambda m: f"{name}: {m}")
        return
    plain16_losses, plain16_w, _ = run(PLAIN, precision)
    fast_l, plain16_l, plain_l = (torch.tensor(x) for x in (fast_losses, plain16_losses, plain_losses))
    loss_noise = max(float((plain16_l - plain_l).norm()), BF16_LOSS_RTOL * float(plain_l.norm()))
    assert float((fast_l - plain_l).norm()) <= BF16_SLACK * loss_noise, (fast_losses, plain16_losses, plain_losses)
    bf16_noise = _distance(plain16_w, plain_w)
    assert _distance(fast_w, plain_w) <= BF16_SLACK * bf16_noise, (_distance(fast_w, plain_w), bf16_noise)


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("lora")])
def test_fused_lora_trains_like_the_plain_path(case, precision):
    _compare(case, TrainSpec(fused_kernels=True, loss_chunk=None), precision)


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("case", ["lora-all-linear-llama", "lora-t5"])
def test_the_default_levers_train_like_the_plain_path(case, precision):
    """What a run gets without asking: fused kernels and the chunked loss (auto)."""
    _compare(case, TrainSpec(), precision)


def test_loss_chunk_auto_takes_the_chunked_path_on_plain_output_layers_only():
    from peftlab.kernels.head_loss import AUTO_CHUNK, resolve_loss_chunk

    llama, t5 = _model("llama", [LoraConfig(r=4)]), _model("t5", [LoraConfig(r=4)])
    assert resolve_loss_chunk(llama, "auto") == AUTO_CHUNK
    assert resolve_loss_chunk(t5, "auto") == AUTO_CHUNK  # encoder-decoders too (the target's positions)
    assert resolve_loss_chunk(t5, 7) == 7 and resolve_loss_chunk(llama, None) is None  # as given
    wrapped = _model("llama", [LoraConfig(r=4)])

    class Scaled(nn.Linear):  # a method's wrapper on the output layer computes the logits its own way
        def forward(self, x):
            return 2 * super().forward(x)

    wrapped.lm_head = Scaled(wrapped.lm_head.in_features, wrapped.lm_head.out_features, bias=False)
    assert resolve_loss_chunk(wrapped, "auto") is None
    capped = _model("llama", [LoraConfig(r=4)])
    capped.config.final_logit_softcapping = 30.0  # logits = 30 tanh(h W^T / 30): another function
    assert resolve_loss_chunk(capped, "auto") is None
    half = _model("llama", [LoraConfig(r=4)])
    half.get_output_embeddings().to(torch.bfloat16)  # a bf16 head meets float32 states only under autocast
    assert resolve_loss_chunk(half, "auto", "no") is None and resolve_loss_chunk(half, "auto", "bf16") == AUTO_CHUNK
    from peftlab.methods.llama_adapter_v2 import LlamaAdapterV2Config

    assert resolve_loss_chunk(_model("llama", [LlamaAdapterV2Config(length=2)]), "auto") is None  # bias + scale
    hooked = _model("llama", [LoraConfig(r=4)])
    hooked.lm_head.register_forward_hook(lambda module, args, out: out * 2)
    assert resolve_loss_chunk(hooked, "auto") is None
    biased = _model("llama", [LoraConfig(r=4)])
    biased.lm_head = nn.Linear(biased.lm_head.in_features, biased.lm_head.out_features)
    assert resolve_loss_chunk(biased, "auto") is None


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("case", ["lora-t5", "lora-all-linear-llama", "full-untied-t5", "full-tied-t5", "p-tuning-llama",
                                  "prompt-tuning-t5", "prefix-llama"])
def test_chunked_head_loss_trains_like_the_model_loss(case, precision):
    """Chunks of 4 rows over 15 (T5) / 22 (LLaMA, shifted) label positions, padding skipped; with
    full fine-tuning the output layer's own gradient comes from the chunks too. A decoder's virtual
    tokens add positions in front, labelled -100 as their hook labels them (the last one predicts
    the first real token, as in the model's own loss)."""
    _compare(case, TrainSpec(fused_kernels=False, loss_chunk=4), precision)


@pytest.mark.parametrize("kernel", ["native", "torch"])
def test_chunked_head_loss_equals_cross_entropy_exactly_in_value(kernel, monkeypatch):
    """Both ways through a chunk: peftlab's C kernel (where it builds) and torch's ops."""
    from peftlab.kernels import native
    from peftlab.kernels.head_loss import chunked_head_loss

    if kernel == "torch":
        monkeypatch.setattr(native, "handles_cross_entropy", lambda logits: False)
    elif native.library() is None:
        pytest.skip(f"peftlab's C kernels: {native.status()}")

    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 7, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 50, (2, 7), generator=g)
    y[1, 4:] = -100
    ref = torch.nn.functional.cross_entropy((h @ w.t()).reshape(-1, 50), y.reshape(-1), ignore_index=-100)
    ref_grads = torch.autograd.grad(ref, (h, w))
    loss = chunked_head_loss(h, w, y, chunk=3)
    grads = torch.autograd.grad(loss * 2.0, (h, w))  # an upstream factor reaches both gradients
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, 2.0 * want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_compiled_training_matches_eager(family, monkeypatch):
    """torch.compile traces the adapted model without graph breaks and trains the same weights.
    The backend here is aot_eager (dynamo + AOT autograd, no C++ codegen: seconds, not minutes);
    the benchmark runs inductor."""
    import torch._dynamo

    from torch._dynamo.utils import counters

    monkeypatch.setattr(fast, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    case = "lora-t5" if family == "t5" else "lora-all-linear-llama"
    _compare(case, TrainSpec(fused_kernels=True, compile=True), "no")
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 1


def test_compile_with_fast_dropout_has_no_graph_breaks(monkeypatch):
    """Dynamo cannot trace ``random_``: under torch.compile the fast dropout (modules and attention)
    hands over to torch's dropout, which the compiler fuses, instead of breaking the graph at every
    dropout (which then made dynamo recompile transformers' attention per layer until its limit)."""
    import torch._dynamo

    from torch._dynamo.utils import counters

    from peftlab.kernels.ops import FastDropout

    monkeypatch.setattr(fast, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    model = _model("t5", [LoraConfig(r=4, targets=("q", "v"))], dropout_rate=0.1)
    losses, _, _ = _train(model, TrainSpec(fast_dropout=True, compile=True, mixed_precision="no"), _batch("t5"), steps=3)
    assert any(isinstance(m, FastDropout) for m in model.modules())
    assert model.config._attn_implementation == "blocks_fastdrop_sdpa"  # fused_kernels is on by default
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("case", ["lora-all-linear-llama", "llama-adapter-llama", "prefix-llama"])
def test_causal_blocks_train_like_the_plain_path(case, precision, monkeypatch):
    """With blocks of 4 queries the tiny LLaMA's 9 positions take ``causal_blocks`` in every layer
    (4 heads on 2 key/value heads), the padded batch through its boolean mask; the plain path
    (fused_kernels off) keeps SDPA. Under peftlab's attention hook LLaMA-Adapter's gated prompt
    attention adds onto the blocks' output, and prefix tuning's rows come before the keys."""
    from peftlab.kernels import causal_blocks

    monkeypatch.setattr(causal_blocks, "BLOCK", 4)
    calls = []
    real = causal_blocks.block_causal_attention
    monkeypatch.setattr(causal_blocks, "block_causal_attention",
                        lambda *args: calls.append(args[3] is not None) or real(*args))
    _compare(case, TrainSpec(fused_kernels=True, loss_chunk=None), precision)
    assert len(calls) == 2 * 4 and all(calls)  # 2 layers x 4 steps of the fused run, with the padding mask


def test_fused_forward_matches_plain_in_eval_and_merged(tiny_t5, t5_batch):
    model = _model("t5", [LoraConfig(r=4, alpha=12)])
    model.eval()
    with torch.no_grad():
        fused = model(**t5_batch).logits
        for m in model.modules():
            if isinstance(m, LoraLinear):
                m.fused = False
        plain = model(**t5_batch).logits
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_fused_path_is_not_used_when_the_base_weight_trains():
    base = nn.Linear(8, 6)
    m = LoraLinear(base, r=2, alpha=4, dropout=0.0, init="kaiming", rslora=False)
    m.weight.requires_grad_(True)  # e.g. LoRA under full fine-tuning: W needs its gradient
    m(torch.randn(3, 8)).sum().backward()
    assert m.weight.grad is not None


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_cast_frozen_is_bit_identical_under_bf16(family):
    """Frozen linear weights stored in bf16 are what bf16 autocast computes with anyway."""
    methods = [LoraConfig(r=4, alpha=8, targets=("q", "v"))]
    plain = dataclasses.replace(PLAIN, mixed_precision="bf16")
    batch = _batch(family)
    model = _model(family, methods)
    losses, weights, _ = _train(model, dataclasses.replace(plain, cast_frozen=True), batch, steps=3)
    ref_losses, ref_weights, _ = _train(_model(family, methods), plain, batch, steps=3)
    assert losses == ref_losses
    for name, w in ref_weights.items():
        assert torch.equal(weights[name], w), name
    linear = model.get_submodule("lm_head")
    embedding = model.get_input_embeddings()
    if linear.weight is embedding.weight:  # tied (tiny T5): the embedding's output is not autocast
        assert linear.weight.dtype == torch.float32
    else:
        assert linear.weight.dtype == torch.bfloat16 and embedding.weight.dtype == torch.float32
    lora = next(m for m in model.modules() if isinstance(m, LoraLinear))
    assert lora.weight.dtype == torch.bfloat16 and lora.lora_a.dtype == torch.float32


def test_cast_frozen_does_nothing_in_fp32():
    model = _model("t5", [LoraConfig(r=4)])
    fast.training_loss(model, TrainSpec(cast_frozen=True))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_fast_dropout_has_the_rate_scale_and_backward_of_dropout():
    from peftlab.kernels.ops import FastDropout

    drop = FastDropout(0.1).train()
    assert isinstance(drop, nn.Dropout)  # LoRA's fused path checks for nn.Dropout
    x = torch.ones(512, 256, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    dropped = y == 0
    n, rate = y.numel(), round(0.1 * 65536) / 65536  # the rate, quantised to 1/65536
    sigma = (rate * (1 - rate) / n) ** 0.5
    assert abs(dropped.float().mean().item() - rate) < 5 * sigma
    assert torch.all(y[~dropped] == 1 / (1 - rate))  # kept values scaled by the exact inverse: unbiased
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, torch.where(dropped, 0.0, g / (1 - rate)))  # forward's mask
    torch.manual_seed(0)
    assert torch.equal(drop(x.detach()), y.detach())  # seeded like torch's own dropout
    drop.eval()
    assert drop(x) is x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_kernels_give_the_plain_formula_bit_for_bit(dtype):
    """The faster forms (0-dim int16 threshold, one ``addcmul`` of the values and the bool mask)
    against the plain ones: the same mask from the same draw and the same values, to the bit."""
    from peftlab.kernels import ops as kernels

    torch.manual_seed(3)
    kept, scale = kernels.keep_mask(torch.Size((6, 7, 33)), 0.1, torch.device("cpu"))
    torch.manual_seed(3)
    words = torch.empty((6 * 7 * 33 + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    plain_dropped = words.view(torch.int16)[: 6 * 7 * 33].view(6, 7, 33) < round(0.1 * 65536) - 32768
    assert torch.equal(kept, ~plain_dropped) and kept.any() and not kept.all()
    x = torch.randn(6, 7, 33).to(dtype)
    out = kernels._apply_mask(x, kept, scale)
    assert out.dtype == dtype and torch.equal(out, (x * scale).masked_fill_(~kept, 0))
    unscaled = kernels._apply_mask(x, kept, 1.0)
    assert unscaled.dtype == dtype and torch.equal(unscaled, x.masked_fill(~kept, 0))


def test_fast_dropout_trains_a_t5_with_dropout():
    """Another random stream, so not the same numbers but the same training in distribution: the
    mean loss of 6 steps, averaged over 4 seeds, within 3% of torch's dropout (the seed-to-seed
    spread of that average is ~1%); every nn.Dropout swapped, the attention's dropout routed."""
    from peftlab.kernels import ops as kernels

    batch = _batch("t5")

    def mean_loss(fast_dropout: bool, seed: int) -> float:
        model = _model("t5", [LoraConfig(r=4, alpha=8)], dropout_rate=0.1)
        n_dropout = sum(type(m) is nn.Dropout for m in model.modules())
        loss_of = fast.training_loss(model, dataclasses.replace(PLAIN, fast_dropout=fast_dropout))
        if fast_dropout:
            assert sum(isinstance(m, kernels.FastDropout) for m in model.modules()) == n_dropout > 0
            assert model.config._attn_implementation == kernels.ATTENTION
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        losses = []
        for i in range(6):
            torch.manual_seed(1000 * seed + i)
            loss = loss_of(batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
        assert losses[-1] < losses[0]
        return sum(losses) / len(losses)

    plain = sum(mean_loss(False, s) for s in range(4)) / 4
    fast_ = sum(mean_loss(True, s) for s in range(4)) / 4
    assert abs(fast_ - plain) / plain < 0.03, (fast_, plain)


def test_fused_activations_compute_the_same_gelu():
    from transformers.activations import NewGELUActivation

    from peftlab.kernels.ops import TanhGELU, fuse_activations

    model = _model("t5", [LoraConfig(r=4)])
    before = sum(isinstance(m, NewGELUActivation) for m in model.modules())
    batch = _batch("t5")
    with torch.no_grad():
        ref = model(**batch).logits
        assert fuse_activations(model) == before == 4  # one per FFN: 2 encoder + 2 decoder blocks
        assert sum(isinstance(m, TanhGELU) for m in model.modules()) == 4
        torch.testing.assert_close(model(**batch).logits, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_fast_attention_dropout_path_is_sdpa_without_dropout(family):
    """The attention function ``fast_dropout`` registers: stock SDPA outside training, and in
    training its math path (what SDPA falls back to with dropout) equals SDPA at dropout 0."""
    from peftlab.kernels import ops as kernels

    config = {"dropout_rate": 0.1} if family == "t5" else {"attention_dropout": 0.1}
    model, batch = _model(family, [LoraConfig(r=4)], **config), _batch(family)
    with torch.no_grad():
        ref_eval = model.eval()(**batch).logits
    assert kernels.use_fast_attention_dropout(model)
    assert model.config._attn_implementation == kernels.ATTENTION
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ref_eval, rtol=0, atol=0)
    calls = []
    real = kernels.math_attention

    def spy(*args):
        calls.append(args[-1])
        return real(*args[:-1], 0.0)  # the math path itself, dropout off

    kernels.math_attention = spy
    try:
        with torch.no_grad():
            attention = type(model.get_submodule(_attention_path(family)))
            for m in model.modules():  # training mode for attention only: no dropout elsewhere
                m.training = isinstance(m, attention)
            got = model(**batch).logits
    finally:
        kernels.math_attention = real
    assert calls and set(calls) == {0.1}
    torch.testing.assert_close(got, ref_eval, rtol=1e-5, atol=1e-5)


def _attention_path(family: str) -> str:
    return "encoder.block.0.layer.0.SelfAttention" if family == "t5" else "model.layers.0.self_attn"


@pytest.mark.parametrize("family", ["t5", "llama"])
@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                             (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16)])
def test_fused_rms_norm_computes_transformers_norm(family, x_dtype, w_dtype):
    """Output, input gradient and weight gradient of the fused RMSNorm against transformers' own
    module, for both roundings (T5: to a 16-bit weight's dtype; LLaMA: back to the input's)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    from peftlab.kernels.ops import fuse_rms_norms

    cls = T5LayerNorm if family == "t5" else LlamaRMSNorm
    g = torch.Generator().manual_seed(0)
    stock = cls(16, eps=1e-6)
    with torch.no_grad():
        stock.weight.copy_(torch.rand(16, generator=g) + 0.5)
    stock.to(w_dtype)
    fused = cls(16, eps=1e-6).to(w_dtype)
    fused.load_state_dict(stock.state_dict())
    assert fuse_rms_norms(nn.Sequential(fused)) == 1 and isinstance(fused, cls)
    assert fuse_rms_norms(nn.Sequential(fused)) == 0  # once only
    x = (torch.randn(3, 5, 16, generator=g) * 3).to(x_dtype)
    grad = torch.randn(3, 5, 16, generator=g)
    outs = []
    for m in (stock, fused):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(grad.to(y.dtype))
        outs.append((y, xi.grad, m.weight.grad))
    (y0, gx0, gw0), (y1, gx1, gw1) = outs
    assert y1.dtype == y0.dtype and gx1.dtype == gx0.dtype and gw1.dtype == gw0.dtype
    tol = dict(rtol=1e-5, atol=1e-5) if y0.dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(y1, y0, **tol)
    torch.testing.assert_close(gx1.float(), gx0.float(), **(tol if x_dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)))
    torch.testing.assert_close(gw1.float(), gw0.float(), **(tol if w_dtype == torch.float32 else dict(rtol=1.6e-2, atol=5e-2)))


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_fused_kernels_give_full_fine_tuning_the_plain_gradients(family):
    """Full fine-tuning trains every RMSNorm weight: one step's gradients of every parameter along
    the fused path equal the plain path's to float32 noise (1e-5 of each tensor's largest entry;
    measured ~1e-6), and four steps' losses agree. (Weights after several AdamW steps are not
    compared here: with ~10^5 gradients, some lie near Adam's epsilon, where float32 noise flips a
    step of ~lr; the LoRA cases above compare weights.)"""
    model_kw = {"tie_word_embeddings": False} if family == "t5" else {}
    batch = _batch(family)

    def grads(spec):
        model = _model(family, [FullFineTuneConfig()], **model_kw)
        loss_of = fast.training_loss(model, dataclasses.replace(spec, mixed_precision="no"))
        model.train()
        torch.manual_seed(100)
        loss_of(batch).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, fused = grads(PLAIN), grads(TrainSpec(fused_kernels=True))
    assert plain.keys() == fused.keys() and any("norm" in n for n in fused)
    for name, g in plain.items():
        torch.testing.assert_close(fused[name], g, rtol=0, atol=1e-5 * float(g.abs().max()) + 1e-12,
                                   msg=lambda m: f"{name}: {m}")
    steps = [_train(_model(family, [FullFineTuneConfig()], **model_kw), dataclasses.replace(s, mixed_precision="no"),
                    batch)[0] for s in (PLAIN, TrainSpec(fused_kernels=True))]
    torch.testing.assert_close(torch.tensor(steps[1]), torch.tensor(steps[0]), **FP32_TOL)


@pytest.mark.parametrize("native_kernel", [True, False])
@pytest.mark.parametrize("mask_kind", ["float", "bool", "causal"])
def test_math_attention_with_dropout_is_the_plain_formula(mask_kind, native_kernel, monkeypatch):
    """The in-place math path (no scale pass for s = 1, mask added in place, dropout's 1/(1-p)
    applied after the product) against softmax(q k^T s + mask) ⊙ m / (1-p) @ v with the same mask m
    drawn from the same seed, values and gradients (T5 runs it with s = 1 and a float bias)."""
    from peftlab.kernels import native
    from peftlab.kernels import ops as kernels

    if native_kernel and native.library() is None:
        pytest.skip(f"peftlab's C kernels: {native.status()}")
    if not native_kernel:
        monkeypatch.setattr(native, "handles", lambda x: False)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, requires_grad=True) for _ in range(3))
    scale = 1.0 if mask_kind == "float" else 0.5
    mask = {"float": torch.randn(1, 3, 5, 5, generator=g, requires_grad=True),
            "bool": torch.rand(2, 1, 5, 5, generator=g) > 0.2, "causal": None}[mask_kind]
    grad = torch.randn(2, 3, 5, 4, generator=g)

    def plain():
        scores = q @ k.transpose(-2, -1) * scale
        if mask_kind == "float":
            scores = scores + mask
        elif mask_kind == "bool":
            scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
        else:
            scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1)
        return kernels._Dropout.apply(probs, 0.1) @ v  # the same draw: the same mask

    outs = []
    for fn in (plain, lambda: kernels.math_attention(q, k, v, mask, mask_kind == "causal", scale, 0.1)):
        torch.manual_seed(7)
        out = fn()
        params = [q, k, v] + ([mask] if mask_kind == "float" else [])
        outs.append((out, torch.autograd.grad(out, params, grad)))
    (want, want_grads), (got, got_grads) = outs
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
