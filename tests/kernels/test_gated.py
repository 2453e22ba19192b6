"""A gated FFN's activation in one kernel (``peftlab.kernels.native.gated``, ``peftlab.kernels.gated``): the
kernel against torch's composed ops in value and gradient, its dropout against the dropout kernel's
mask bit for bit, and the switched FFNs of T5 and LLaMA against transformers' forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftlab.kernels import native
from peftlab.kernels import gated, ops as kernels

from conftest import build_llama, build_t5

needs_native = pytest.mark.skipif(native.library() is None, reason=f"peftlab's C kernels: {native.status()}")
F = nn.functional
TORCH_ACT = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def _inputs(n: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g) * 4
    a[: min(n, 6)] = torch.tensor([0.0, -0.0, 30.0, -30.0, 100.0, -100.0])[: min(n, 6)]  # the tails
    b, grad = torch.randn(n, generator=g), torch.randn(n, generator=g)
    return a.to(dtype), b.to(dtype), grad.to(dtype)


def _reference(a, b, grad, act):
    """torch's composed ops, in float64: value and both gradients."""
    a64, b64 = a.double().requires_grad_(), b.double().requires_grad_()
    y = TORCH_ACT[act](a64) * b64
    da, db = torch.autograd.grad(y, (a64, b64), grad.double())
    return y.detach(), da, db


@needs_native
@pytest.mark.parametrize("act", native.GATED_ACTIVATIONS)
@pytest.mark.parametrize("n", [1, 7, 1031, 300_001])  # mid-hash, mid-block, split across threads
def test_gated_kernel_is_the_activation_times_the_gate_in_float32(act, n):
    a, b, grad = _inputs(n)
    y, da, db = _reference(a, b, grad, act)
    torch.testing.assert_close(native.gated(a, b, act).double(), y, rtol=2e-6, atol=1e-7)
    got_da, got_db = native.gated_backward(grad, a, b, act)
    torch.testing.assert_close(got_da.double(), da, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_db.double(), db, rtol=2e-6, atol=1e-7)


@needs_native
@pytest.mark.parametrize("act", native.GATED_ACTIVATIONS)
def test_gated_kernel_rounds_as_torchs_composed_ops_in_bfloat16(act):
    """bfloat16 in and out, float32 inside, each intermediate torch's ops store rounded where they
    round it: torch's own bf16 results (forward and both gradients, also through the dropout) but
    for the activation's last float32 bits, which flip a rare bfloat16 rounding (one ulp), and the
    tanh-GELU's negative tail: torch's 0.5 x (1 + tanh u) cancels there (float32 1 + tanh u loses
    most bits below x ~ -3 and is 0 below x ~ -5), where the kernel's x sigmoid(2u) keeps the true
    value: one ulp apart, or a tiny value (< 1e-5 here) against torch's 0."""
    a, b, grad = _inputs(20_011, torch.bfloat16)
    seed, cut, scale = 0x5EED, 6554, kernels.drop_mask_scale(0.1)
    for drop in (False, True):
        a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
        h = TORCH_ACT[act](a_) * b_
        want = native.dropout(h, seed, cut, scale) if drop else h  # the dropout kernel: torch's arithmetic, tested
        want_g = native.dropout(grad, seed, cut, scale) if drop else grad
        want_da, want_db = torch.autograd.grad(h, (a_, b_), want_g)
        args = (seed, cut, scale) if drop else ()
        got = native.gated(a, b, act, *args)
        got_da, got_db = native.gated_backward(grad, a, b, act, *args)
        for mine, theirs in ((got, want), (got_da, want_da), (got_db, want_db)):
            assert mine.dtype == torch.bfloat16
            differ = (mine != theirs) & (a > -3)
            assert float(differ.float().mean()) < 0.002, float(differ.float().mean())
            torch.testing.assert_close(mine.float(), theirs.float(), rtol=2.0**-6, atol=1e-5)  # two ulps


@needs_native
def test_gated_kernel_keeps_nan_and_the_infinite_tails():
    a = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    b = torch.tensor([1.0, 2.0, 1.0, float("nan")])
    for act in native.GATED_ACTIVATIONS:
        want = TORCH_ACT[act](a) * b
        torch.testing.assert_close(native.gated(a, b, act), want, equal_nan=True)


@needs_native
@pytest.mark.parametrize("act", native.GATED_ACTIVATIONS)
def test_gated_dropout_is_the_dropout_kernels_mask_bit_for_bit(act):
    """With a cut the product is dropped exactly as ``native.dropout`` drops it (same seed), forward
    and backward (the gradient masked, then the product's backward)."""
    a, b, grad = _inputs(5003)
    seed, cut, scale = 0x5EED, 6554, kernels.drop_mask_scale(0.1)
    want = native.dropout(native.gated(a, b, act), seed, cut, scale)
    assert torch.equal(native.gated(a, b, act, seed, cut, scale), want)
    assert 0.07 < float((want == 0).float().mean()) < 0.13
    want_da, want_db = native.gated_backward(native.dropout(grad, seed, cut, scale), a, b, act)
    got_da, got_db = native.gated_backward(grad, a, b, act, seed, cut, scale)
    assert torch.equal(got_da, want_da) and torch.equal(got_db, want_db)


def _ffn(family: str, **config):
    model = (build_t5 if family == "t5" else build_llama)(seed=0, **config)
    ffn = next(m for m in model.modules() if type(m).__name__ in gated.GATED_FFNS)
    return model, ffn


@needs_native
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_switched_ffns_compute_transformers_ffn(family):
    model, ffn = _ffn(family)
    base_cls = type(ffn)
    keys = list(model.state_dict())
    x = torch.randn(2, 5, ffn.wi_0.in_features if family == "t5" else ffn.gate_proj.in_features, requires_grad=True)
    want = ffn(x)
    want_grads = torch.autograd.grad(want.square().sum(), [x, *ffn.parameters()])
    n_ffns = sum(type(m) is base_cls for m in model.modules())
    assert gated.fuse_gated_ffns(model) == n_ffns > 0
    assert gated.fuse_gated_ffns(model) == 0  # once
    assert isinstance(ffn, base_cls) and type(ffn) is not base_cls and list(model.state_dict()) == keys
    calls = []
    orig = native.gated
    try:
        native.gated = lambda *args, **kw: calls.append(1) or orig(*args, **kw)
        got = ffn(x)
    finally:
        native.gated = orig
    assert calls, "the kernel did not run"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got_grads = torch.autograd.grad(got.square().sum(), [x, *ffn.parameters()])
    for g, w in zip(got_grads, want_grads):  # float32 noise: 1e-5 of each tensor's largest entry
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5 * float(w.abs().max()))


@needs_native
def test_switched_t5_ffn_keeps_torch_dropout_and_takes_fast_dropout_inside():
    """Torch's dropout after the fused product draws the same mask as transformers' forward (the
    same random stream); peftlab's FastDropout is applied inside the kernel with the mask it would
    have drawn itself."""
    _, plain = _ffn("t5", dropout_rate=0.3)
    _, fused = _ffn("t5", dropout_rate=0.3)
    plain.train(), fused.train()
    gated.fuse_gated_ffns(fused)
    x = torch.randn(2, 6, plain.wi_0.in_features)
    for fast in (False, True):
        if fast:
            kernels.use_fast_dropout(plain), kernels.use_fast_dropout(fused)
        torch.manual_seed(3)
        want_h = plain.dropout(plain.act(plain.wi_0(x)) * plain.wi_1(x))
        torch.manual_seed(3)
        want = plain(x)
        torch.manual_seed(3)
        got = fused(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.manual_seed(3)
        seen = {}
        handle = fused.wo.register_forward_pre_hook(lambda m, args: seen.update(h=args[0]))
        fused(x)
        handle.remove()
        assert torch.equal(seen["h"] == 0, want_h == 0)  # the same elements dropped


@needs_native
def test_ffn_keeps_transformers_forward_where_the_kernel_would_skip_a_watched_module():
    model, ffn = _ffn("t5")
    gated.fuse_gated_ffns(model)
    seen = []
    ffn.act.register_forward_hook(lambda m, args, out: seen.append(out))
    x = torch.randn(1, 3, ffn.wi_0.in_features)
    ffn(x)
    assert len(seen) == 1  # the activation module ran: a hook on it still fires


def test_ffns_with_another_activation_keep_transformers_forward(monkeypatch):
    model, ffn = _ffn("llama", hidden_act="relu")
    gated.fuse_gated_ffns(model)
    monkeypatch.setattr(native, "gated", lambda *a, **k: pytest.fail("the kernel ran for relu"))
    x = torch.randn(1, 3, ffn.gate_proj.in_features)
    torch.testing.assert_close(ffn(x), ffn.down_proj(F.relu(ffn.gate_proj(x)) * ffn.up_proj(x)))


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_ffns_the_kernel_does_not_take_compute_transformers_ffn_once(family, monkeypatch):
    """Off CPU or in another dtype the switched FFN finishes with transformers' ops on the projections
    it already computed: the same values and dropout draws as transformers' forward, each projection
    called once."""
    _, plain = _ffn(family, **({"dropout_rate": 0.3} if family == "t5" else {}))
    _, fused = _ffn(family, **({"dropout_rate": 0.3} if family == "t5" else {}))
    plain.train(), fused.train()
    gated.fuse_gated_ffns(fused)
    monkeypatch.setattr(native, "handles_gated", lambda a, b: False)
    gate = fused.wi_0 if family == "t5" else fused.gate_proj
    calls = []
    gate.register_forward_hook(lambda m, args, out: calls.append(1))
    x = torch.randn(2, 6, gate.in_features)
    torch.manual_seed(3)
    want = plain(x)
    torch.manual_seed(3)
    got = fused(x)
    assert torch.equal(got, want) and len(calls) == 1
