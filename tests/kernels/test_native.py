"""peftlab's C kernels (``peftlab.kernels.native``): dropout against its documented formula, torch's
arithmetic, itself split across threads, and the fallback when it cannot be built; cross-entropy
against torch's, at the edges (-inf, huge and NaN logits), split across threads."""

from __future__ import annotations

import pytest
import torch

from peftlab.kernels import native
from peftlab.kernels import ops as kernels

needs_native = pytest.mark.skipif(native.library() is None, reason=f"peftlab's C kernels: {native.status()}")

_M = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def _uniform(seed: int, i: int) -> int:
    """u_i of ``csrc/mask.h`` (the dropout kernels' mask), in Python integers."""
    z = (seed + (i // 4 + 1) * _GAMMA) & _M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M
    z ^= z >> 31
    return (z >> (16 * (i % 4))) & 0xFFFF


@needs_native
@pytest.mark.parametrize("n", [1, 3, 4, 7, 1024, 1031, 2053])
def test_the_mask_is_the_documented_hash(n):
    """Element i is dropped exactly where its 16-bit uniform is below the cut, for sizes that end
    mid-hash and mid-block (blocks of 1,024 elements)."""
    seed, cut, scale = 0x0123456789ABCDEF, 20000, 1.5
    x = torch.arange(1, n + 1, dtype=torch.float32)
    out = native.dropout(x, seed, cut, scale)
    want = torch.tensor([0.0 if _uniform(seed, i) < cut else (i + 1) * scale for i in range(n)])
    assert torch.equal(out, want)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_values_are_torchs_product_to_the_bit(dtype):
    """Kept elements are ``x * scale`` as torch computes it in ``dtype`` (bfloat16: the float32
    product rounded to nearest even), dropped ones 0; the shape and dtype are the input's."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 67, 33, generator=g) * 10).to(dtype)
    x[0, 0, :4] = torch.tensor([float("inf"), float("-inf"), 0.0, -0.0], dtype=dtype)
    scale = kernels.drop_mask_scale(0.1)
    out = native.dropout(x, 12345, round(0.1 * 65536), scale)
    assert out.shape == x.shape and out.dtype == dtype
    dropped = torch.tensor([_uniform(12345, i) < round(0.1 * 65536) for i in range(x.numel())]).view(x.shape)
    assert torch.equal(out, torch.where(dropped, torch.zeros((), dtype=dtype), x * scale))
    nan = torch.full((8,), float("nan"), dtype=dtype)
    kept_nan = native.dropout(nan, 12345, 0, scale)  # cut 0: nothing dropped
    assert kept_nan.isnan().all()


@needs_native
def test_drop_rate_and_independence_of_the_four_words_of_a_hash():
    """P(dropped) = cut / 65536 at every position of a hash (i mod 4), and masks of different
    seeds agree only as often as independent ones would."""
    n, cut = 1 << 20, round(0.1 * 65536)
    ones = torch.ones(n)
    a = native.dropout(ones, 1, cut, 1.0) == 0
    b = native.dropout(ones, 2, cut, 1.0) == 0
    rate = cut / 65536
    sigma = (rate * (1 - rate) / (n // 4)) ** 0.5
    for k in range(4):
        assert abs(a[k::4].float().mean().item() - rate) < 5 * sigma
    both = (a & b).float().mean().item()  # independent: rate^2
    assert abs(both - rate * rate) < 5 * (rate * rate / n) ** 0.5


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_call_split_across_threads_is_the_single_threaded_result(monkeypatch, dtype):
    x = torch.randn(3 * (1 << 12) + 5).to(dtype)
    monkeypatch.setattr(native, "_MIN_SPLIT", 1 << 40)
    one = native.dropout(x, 99, 6554, 1.25)
    monkeypatch.setattr(native, "_MIN_SPLIT", 1 << 10)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(3, threads))
    try:
        assert torch.equal(native.dropout(x, 99, 6554, 1.25), one)
    finally:
        torch.set_num_threads(threads)


@needs_native
def test_dropout_backward_recomputes_the_forward_mask_and_seeds_repeat():
    x = torch.randn(4, 300, requires_grad=True)
    torch.manual_seed(5)
    y = kernels._Dropout.apply(x, 0.3)
    grad = torch.randn_like(y)
    y.backward(grad)
    scale = kernels.drop_mask_scale(0.3)
    assert torch.equal(x.grad, torch.where(y == 0, 0.0, grad * scale))
    assert torch.equal(y, torch.where(y == 0, 0.0, x.detach() * scale))
    torch.manual_seed(5)
    assert torch.equal(kernels._Dropout.apply(x.detach(), 0.3), y.detach())  # torch.manual_seed repeats it
    assert not torch.equal(kernels._Dropout.apply(x.detach(), 0.3), y.detach())  # a new seed each call


def _fresh(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_why", None)
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))


def test_switched_off_or_unbuildable_kernels_leave_the_torch_path(monkeypatch, tmp_path):
    """``PEFTLAB_NATIVE=0`` or a compiler that fails: ``status`` says why, ``handles`` is False and
    dropout takes the ``keep_mask`` path (its mask saved for backward)."""
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("PEFTLAB_NATIVE", "0")
    assert native.status() == "off: switched off (PEFTLAB_NATIVE=0)"
    assert not native.handles(torch.ones(3))

    _fresh(monkeypatch, tmp_path)
    monkeypatch.delenv("PEFTLAB_NATIVE")
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(native.shutil, "which", lambda name: "/bin/false" if name == "false" else None)
    assert native.status().startswith("off: RuntimeError: false -O3")
    x = torch.randn(64, 64, requires_grad=True)
    y = kernels._Dropout.apply(x, 0.5)
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0) and 0 < (y == 0).sum() < y.numel()
    assert not list(tmp_path.rglob("*.so"))


@pytest.mark.skipif(native._compiler() is None, reason="no C compiler")
def test_the_library_is_built_once_into_the_cache(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    lib = native.library()
    assert lib is not None and native.status() == f"on ({lib._name})"
    built = list(tmp_path.rglob("kernels-*.so"))
    assert len(built) == 1 and built[0].parent == tmp_path / "native"
    mtime = built[0].stat().st_mtime_ns
    _fresh(monkeypatch, tmp_path)
    assert native.library() is not None and built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt


@pytest.mark.skipif(native._compiler() is None or not hasattr(__import__("os"), "getuid"),
                    reason="no C compiler, or no POSIX ownership")
def test_a_library_in_a_cache_others_can_write_or_own_is_not_loaded(monkeypatch, tmp_path):
    """Code is loaded only from a cache this user owns and no one else may write (a shared cache
    would let another user plant a library every training run executes)."""
    import os

    _fresh(monkeypatch, tmp_path)
    assert native.library() is not None
    (tmp_path / "native").chmod(0o777)
    _fresh(monkeypatch, tmp_path)
    assert "writable by others" in native.status() and native.library() is None
    (tmp_path / "native").chmod(0o755)
    if os.getuid() == 0:  # only root can give a file away
        built = next(tmp_path.rglob("kernels-*.so"))
        os.chown(built, 12345, -1)
        _fresh(monkeypatch, tmp_path)
        assert "belongs to another user" in native.status()


@needs_native
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_forked_child_splits_calls_with_its_own_threads(monkeypatch):
    """The parent's pool threads do not exist in a forked child (a DataLoader worker): the child
    makes its own instead of waiting on them forever."""
    import os

    monkeypatch.setattr(native, "_MIN_SPLIT", 1 << 10)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        x = torch.randn(1 << 14)
        want = native.dropout(x, 7, 6554, 1.25)  # the parent's pool now exists
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only if the split call finishes and agrees
            ok = torch.equal(native.dropout(x, 7, 6554, 1.25), want)
            os._exit(0 if ok else 1)
        import signal
        import time

        deadline = time.monotonic() + 60
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's split call never finished")
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        torch.set_num_threads(threads)


def _torch_cross_entropy(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss and softmax - onehot in ``x``'s dtype, by torch in float32."""
    logp = torch.log_softmax(x.float(), dim=-1)
    rows = torch.arange(x.shape[0])
    grad = logp.exp()
    grad[rows, y] -= 1.0
    return -logp[rows, y], grad.to(x.dtype)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [1, 5, 16, 37, 1000])
def test_cross_entropy_kernel_is_torchs_loss_and_gradient(dtype, vocab):
    """Loss within float32 rounding of torch's; the in-place gradient softmax - onehot within one
    rounding of torch's float32 value to ``dtype`` (vocabularies that end mid-vector too)."""
    g = torch.Generator().manual_seed(vocab)
    x = (torch.randn(9, vocab, generator=g) * 4).to(dtype)
    y = torch.randint(0, vocab, (9,), generator=g)
    want_loss, want_grad = _torch_cross_entropy(x, y)
    got = x.clone()
    loss = native.cross_entropy_(got, y)
    assert loss.dtype == torch.float32 and loss.shape == (9,)
    torch.testing.assert_close(loss, want_loss, rtol=2e-6, atol=2e-6)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -22
    assert ((got.float() - want_grad.float()).abs() <= ulp * want_grad.float().abs() + 1e-7).all()
    assert torch.allclose(got.float().sum(-1), torch.zeros(9), atol=ulp * 4)  # a softmax minus a one-hot


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_kernel_at_the_edges(dtype):
    """-inf logits get probability 0; logits of +-3e4 (far past exp's range) stay exact as torch's;
    a NaN logit makes its own row NaN, the other rows are untouched by it."""
    vocab = 40
    x = torch.zeros(4, vocab)
    x[0, 5:] = float("-inf")  # five possible classes
    x[1] = torch.linspace(-3e4, 3e4, vocab)  # one class takes everything
    x[2, 7] = float("nan")
    x[3] = torch.arange(vocab) * 0.5
    x = x.to(dtype)
    y = torch.tensor([2, vocab - 1, 0, 11])
    want_loss, want_grad = _torch_cross_entropy(x, y)
    got = x.clone()
    loss = native.cross_entropy_(got, y)
    assert loss[2].isnan() and got[2].isnan().all()
    keep = [0, 1, 3]
    torch.testing.assert_close(loss[keep], want_loss[keep], rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(got[keep].float(), want_grad[keep].float(), rtol=2 ** -7, atol=1e-6)
    assert (got[0, 5:] == 0).all() and got[1, -1] == 0 and loss[1] == 0


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_split_across_threads_is_the_single_threaded_result(monkeypatch, dtype):
    x = torch.randn(37, 300).to(dtype)
    y = torch.randint(0, 300, (37,))
    monkeypatch.setattr(native, "_MIN_SPLIT", 1 << 40)
    one, loss = x.clone(), None
    loss = native.cross_entropy_(one, y)
    monkeypatch.setattr(native, "_MIN_SPLIT", 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(3, threads))
    try:
        split = x.clone()
        assert torch.equal(native.cross_entropy_(split, y), loss) and torch.equal(split, one)
    finally:
        torch.set_num_threads(threads)


@needs_native
def test_cross_entropy_refuses_what_it_cannot_take_before_writing():
    x = torch.randn(3, 10)
    before = x.clone()
    with pytest.raises(IndexError, match=r"outside \[0, 10\)"):
        native.cross_entropy_(x, torch.tensor([1, 10, 2]))
    with pytest.raises(IndexError):
        native.cross_entropy_(x, torch.tensor([1, -100, 2]))  # ignored positions are the caller's to drop
    with pytest.raises(ValueError, match="3 rows"):
        native.cross_entropy_(x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="contiguous"):
        native.cross_entropy_(x.t(), torch.tensor([1, 2, 3]))
    assert torch.equal(x, before)
    assert not native.handles_cross_entropy(torch.randn(3, 10, dtype=torch.float64))
    assert not native.handles_cross_entropy(torch.randn(3, 10, requires_grad=True))  # it writes in place
