"""Causal attention by blocks of queries (``peftlab.kernels.causal_blocks``) against SDPA: the same
values and gradients in float32, SDPA's own error in bfloat16, and when it declines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftlab.kernels import causal_blocks
from peftlab.kernels.causal_blocks import block_causal_attention, takes


def _qkv(t: int, dtype=torch.float32, b: int = 2, h: int = 3, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, h, t, d, generator=g, dtype=torch.float64) * s).to(dtype).requires_grad_()
            for s in (2.0, 2.0, 1.0)]


def _padded_mask(b: int, t: int, lengths) -> torch.Tensor:
    """(B, 1, T, T) bool, True = attend: causal and the key not padding (right padding)."""
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    keys = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    return (causal[None] & keys[:, None, :])[:, None]


def _sdpa(q, k, v, mask):
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("t", [130, 256])
@pytest.mark.parametrize("masked", [False, True])
def test_blocks_are_sdpa_in_float32(t, masked):
    """Sequences that end mid-block; no mask (is_causal) or a right-padded batch's boolean mask."""
    q, k, v = _qkv(t)
    mask = _padded_mask(2, t, [t, t - 37]) if masked else None
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    want = _sdpa(q, k, v, mask)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    assert takes(q, k, mask, 0.0, causal=not masked)
    before = [x.detach().clone() for x in (q, k, v)]
    got = block_causal_attention(q, k, v, mask, q.shape[-1] ** -0.5)
    assert all(torch.equal(x, y) for x, y in zip((q, k, v), before))  # float32 inputs are not scaled in place
    got_grads = torch.autograd.grad(got, (q, k, v), grad)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_before_the_keys_are_seen_by_every_query(dtype):
    """Prefix tuning's n rows before the keys (every query attends them), a padded batch, the mask
    bottom-right aligned: SDPA's values and gradients (bf16: within its rounding)."""
    t, n = 150, 7
    q, _, _ = _qkv(t, dtype)
    _, k, v = _qkv(n + t, dtype, seed=3)
    mask = torch.nn.functional.pad(_padded_mask(2, t, [t, t - 20]), (n, 0), value=True)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = _sdpa(q, k, v, mask)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    assert takes(q, k, mask, 0.0, causal=False)
    assert not takes(q, k, None, 0.0, causal=True)  # without a mask SDPA aligns top-left: not ours
    got = block_causal_attention(q, k, v, mask, q.shape[-1] ** -0.5)
    got_grads = torch.autograd.grad(got, (q, k, v), grad)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.05, atol=0.05)
    torch.testing.assert_close(got, want, **tol)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, **tol)


def test_bfloat16_errors_are_sdpas_own():
    """Against a float64 reference, the block path's bf16 output and gradients are off by no more
    than SDPA's bf16 ones (times 1.25): scores and dP in float32, as SDPA's kernel."""
    q64, k64, v64 = _qkv(256, torch.float64)
    grad = torch.randn(q64.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _sdpa(q64, k64, v64, None)
    ref_all = (ref, *torch.autograd.grad(ref, (q64, k64, v64), grad))

    def errors(fn):
        q, k, v = (x.detach().to(torch.bfloat16).requires_grad_() for x in (q64, k64, v64))
        out = fn(q, k, v)
        got = (out, *torch.autograd.grad(out, (q, k, v), grad.to(torch.bfloat16)))
        return [float((a.detach().double() - b.detach()).norm() / b.detach().norm()) for a, b in zip(got, ref_all)]

    sdpa = errors(lambda q, k, v: _sdpa(q, k, v, None))
    blocks = errors(lambda q, k, v: block_causal_attention(q, k, v, None, q.shape[-1] ** -0.5))
    assert all(b <= 1.25 * s for b, s in zip(blocks, sdpa)), (blocks, sdpa)


def test_under_autocast_the_scores_stay_float32():
    q, k, v = _qkv(160, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block_causal_attention(q, k, v, None, 0.25)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, block_causal_attention(q, k, v, None, 0.25), rtol=0, atol=0)


def test_it_declines_what_sdpa_does_better_or_it_cannot_do(monkeypatch):
    q, k, _ = _qkv(256)
    assert takes(q, k, None, 0.0, causal=True)
    assert not takes(q, k, None, 0.0, causal=False)  # bidirectional: nothing to skip
    assert not takes(q, k, None, 0.1, causal=True)  # attention dropout
    with torch.no_grad():
        assert not takes(q, k, None, 0.0, causal=True)  # inference: SDPA
        assert takes(q, k, None, 0.0, causal=True, training=True)  # a checkpointed layer's first pass
    assert takes(q.detach(), k.detach(), None, 0.0, causal=True)  # v alone may need the backward
    short_q, short_k, _ = _qkv(2 * causal_blocks.BLOCK - 1)
    assert not takes(short_q, short_k, None, 0.0, causal=True)  # one block: SDPA
    assert not takes(q[:, :, -10:], k, None, 0.0, causal=True)  # a cache: queries after keys
    left = _padded_mask(2, 256, [256, 256]).clone()
    left[1, :, :5] = False  # left padding: rows that attend nothing (SDPA's own rule applies)
    assert not takes(q, k, left, 0.0, causal=False)
    future = _padded_mask(2, 256, [256, 256]).clone()
    future[0, 0, 3, 200] = True  # attends a later key: the blocks would skip it
    assert not takes(q, k, future, 0.0, causal=False)
    assert not takes(q, k, torch.zeros(2, 1, 256, 256), 0.0, causal=False)  # additive masks: SDPA
    assert takes(q, k, _padded_mask(2, 256, [256, 100]), 0.0, causal=False)
    monkeypatch.setattr(causal_blocks, "MAX_KEPT_BYTES", 1000)
    assert not takes(q, k, None, 0.0, causal=True)  # the kept probabilities over budget: SDPA


def test_only_the_values_needing_grad_is_enough():
    """LoRA on v alone: q and k carry no grad, the backward still reaches v (and only v)."""
    q, k, v = _qkv(192)
    q, k = q.detach(), k.detach()
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
    (want,) = torch.autograd.grad(_sdpa(q, k, v, None), (v,), grad)
    (got,) = torch.autograd.grad(block_causal_attention(q, k, v, None, q.shape[-1] ** -0.5), (v,), grad)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_checkpointed_layer_recomputes_what_it_computed():
    """Gradient checkpointing runs a training layer's forward without grad, then again with it: both
    passes take the blocks (``training``), so the recomputed output is the first one to the bit."""
    import types

    from peftlab.kernels import ops as kernels

    q, k, v = _qkv(160)
    module = types.SimpleNamespace(training=True, num_key_value_groups=1, is_causal=True)
    args = (q, k, v, None)  # (B, H, T, D), as transformers hands them over
    with torch.no_grad():
        first, _ = kernels._attention(module, *args, blocks=True)
    again, _ = kernels._attention(module, *args, blocks=True)
    assert torch.equal(first, again.detach())
    module.training = False
    with torch.no_grad():
        stock, _ = kernels._attention(module, *args, blocks=True)  # eval without grad: SDPA
    torch.testing.assert_close(stock, first, rtol=1e-5, atol=1e-5)
