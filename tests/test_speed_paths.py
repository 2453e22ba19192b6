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
from peftlab.schema import TrainSpec
from peftlab.train import fast

from conftest import build_llama, build_t5

PLAIN = TrainSpec(fused_kernels=False, compile=False)
# fp32: the levers only reorder roundings, so losses and weights agree to float32 noise, which Adam
# (a step of ~lr / sqrt(v)) amplifies where a gradient is near zero: atol is 1% of one step (lr 1e-2).
FP32_TOL = dict(rtol=1e-4, atol=1e-4)
# bf16 autocast rounds the plain path's pieces separately and the fused path's once, and Adam turns
# any gradient difference into a step of ~lr: there the optimised path must stay as close to the fp32
# result as the plain bf16 path is (within BF16_SLACK x), and its losses within BF16_LOSS_RTOL.
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
    loss_of = fast.training_loss(model, spec)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    losses = []
    for i in range(steps):
        torch.manual_seed(100 + i)  # the same dropout masks along both paths
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.mixed_precision == "bf16"):
            loss = loss_of(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


CASES = {  # id -> (family, methods, model config overrides)
    "lora-t5": ("t5", lambda: [LoraConfig(r=4, alpha=12, targets=("q", "v", "wo"))], {}),
    "lora-dropout+alignment-t5": ("t5", lambda: [LoraConfig(r=4, alpha=8, dropout=0.1), AlignmentConfig()], {}),
    "lora-all-linear-llama": ("llama", lambda: [LoraConfig(r=4, alpha=6, targets=("all-linear",))], {}),
    "full-untied-t5": ("t5", lambda: [FullFineTuneConfig()], {"tie_word_embeddings": False}),
}


def _distance(a: dict, b: dict) -> float:
    return float(torch.cat([(a[n] - b[n]).flatten() for n in b]).norm())


def _compare(case, fast_spec: TrainSpec, precision: str):
    family, methods, config = CASES[case]
    batch = _batch(family)

    def run(spec, mixed):
        return _train(_model(family, methods(), **config), dataclasses.replace(spec, mixed_precision=mixed), batch)

    plain_losses, plain_w = run(PLAIN, "no")
    assert plain_losses[-1] < plain_losses[0], "the plain path did not train"
    fast_losses, fast_w = run(fast_spec, precision)
    assert fast_w.keys() == plain_w.keys()
    if precision == "no":
        torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(plain_losses), **FP32_TOL)
        for name in plain_w:
            torch.testing.assert_close(fast_w[name], plain_w[name], **FP32_TOL, msg=lambda m: f"{name}: {m}")
        return
    plain16_losses, plain16_w = run(PLAIN, precision)
    torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(plain16_losses), rtol=BF16_LOSS_RTOL, atol=0)
    bf16_noise = _distance(plain16_w, plain_w)
    assert _distance(fast_w, plain_w) <= BF16_SLACK * bf16_noise, (_distance(fast_w, plain_w), bf16_noise)


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("lora")])
def test_fused_lora_trains_like_the_plain_path(case, precision):
    _compare(case, TrainSpec(fused_kernels=True), precision)


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("case", ["lora-t5", "lora-all-linear-llama", "full-untied-t5"])
def test_chunked_head_loss_trains_like_the_model_loss(case, precision):
    """Chunks of 4 rows over 15 (T5) / 22 (LLaMA, shifted) label positions, padding skipped; with
    full fine-tuning the output layer's own gradient comes from the chunks too."""
    _compare(case, TrainSpec(fused_kernels=False, loss_chunk=4), precision)


def test_chunked_head_loss_equals_cross_entropy_exactly_in_value():
    from peftlab.train.head_loss import chunked_head_loss

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

    monkeypatch.setattr(fast, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    case = "lora-t5" if family == "t5" else "lora-all-linear-llama"
    _compare(case, TrainSpec(fused_kernels=True, compile=True), "no")
    model = _model(CASES[case][0], CASES[case][1]())
    explained = torch._dynamo.explain(model)(**_batch(family))
    assert explained.graph_break_count == 0, explained.break_reasons


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
    losses, weights = _train(model, dataclasses.replace(plain, cast_frozen=True), batch, steps=3)
    ref_losses, ref_weights = _train(_model(family, methods), plain, batch, steps=3)
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
