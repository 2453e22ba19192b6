"""peftlab's own CPU kernels in plain C (``csrc/*.c``), compiled on first use with the machine's C
compiler and loaded with ``ctypes`` — no torch headers, so a build takes about a second.

Dropout (``csrc/dropout.c``): the mask comes from a counter-based hash of
(seed, element index) (SplitMix64's output function; four 16-bit uniforms per hash), so the kernel
reads x and writes x·scale or 0 in one pass, and backward recomputes the same mask from the seed
instead of keeping it (no mask memory at all). The drop rate is ``round(p·2^16)/2^16`` as for
``peftlab.kernels.ops.keep_mask``; the seed of each call is drawn from torch's default generator,
so ``torch.manual_seed`` makes runs repeatable.

Gated activation (``csrc/gated.c``): a gated FFN's ``act(a) * b`` (tanh-GELU or SiLU), and the
FFN's dropout when it is peftlab's (the same mask as the dropout kernel's), in one read of a and b
and one write forward; backward reads the gradient, a and b once and writes both gradients once.

Cross-entropy (``csrc/cross_entropy.c``): per row of logits, the loss and, in place, its gradient
softmax - onehot, in one read and one write of the row (float32 arithmetic in a cached scratch row;
torch's path is five passes: upcast, log-softmax, exp, the label's -1, the cast back).
``peftlab.kernels.head_loss`` calls it on each chunk of the output layer's logits.

A call on a large tensor is split across ``torch.get_num_threads()`` threads (``ctypes`` releases
the GIL; neither kernel needs shared state).

The shared library is cached under ``$PEFTLAB_CACHE`` (default ``~/.cache/peftlab``), named by the
source's hash and the CPU's model and flags (it is built with ``-march=native``), written atomically.
``PEFTLAB_NATIVE=0`` switches the kernels off; without a compiler they are off and
``status()`` says why — every caller then takes the torch path (``peftlab env`` prints it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = [_CSRC / name for name in ("dropout.c", "cross_entropy.c", "gated.c")]
_HEADERS = [_CSRC / name for name in ("bf16.h", "exp.h", "mask.h")]
_MIN_SPLIT = 1 << 17  # elements: below this one thread (a thread hand-off costs ~20 us)
_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_why: Optional[str] = None  # why the kernels are off (None: not tried yet, or on)
_pool: Optional[ThreadPoolExecutor] = None


def _after_fork_in_child() -> None:
    """A forked child (a DataLoader worker) has none of the parent's threads: a fresh pool and lock."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _cpu_key() -> str:
    text = ""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        pass
    fields = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
    return "\n".join([platform.machine(), *fields])


def _cache_dir() -> Path:
    root = os.environ.get("PEFTLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "peftlab")
    return Path(root) / "native"


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _check_trusted(target: Path) -> None:
    """Load only a library this user built in directories no one else may write: in a shared or
    planted cache another user could put code there that every training run would execute."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    if uid is None:  # no POSIX ownership to check (Windows)
        return
    for path in (target, target.parent, target.parent.parent):
        st = path.stat()
        if st.st_uid != uid:
            raise RuntimeError(f"{path} belongs to another user (uid {st.st_uid}); not loading code from it "
                               f"(set PEFTLAB_CACHE to a directory of your own)")
        if st.st_mode & 0o022 and not (path.is_dir() and st.st_mode & 0o1000):
            raise RuntimeError(f"{path} is writable by others (mode {oct(st.st_mode & 0o777)}); not loading code "
                               f"from it (set PEFTLAB_CACHE to a directory of your own)")


def _build() -> ctypes.CDLL:
    source = b"".join(path.read_bytes() for path in _SOURCES + _HEADERS)
    key = hashlib.sha256(source + _cpu_key().encode()).hexdigest()[:16]
    target = _cache_dir() / f"kernels-{key}.so"
    if not target.exists():
        cc = _compiler()
        if cc is None:
            raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            cmd = [cc, "-O3", "-march=native", "-fPIC", "-shared", "-o", str(out), *map(str, _SOURCES)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:500]}")
            os.replace(out, target)  # atomic: a concurrent build writes the same bytes
    _check_trusted(target)
    lib = ctypes.CDLL(str(target))
    args = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint64,
            ctypes.c_uint32, ctypes.c_float]
    for fn in (lib.peftlab_dropout_f32, lib.peftlab_dropout_bf16):
        fn.argtypes, fn.restype = args, None
    for fn in (lib.peftlab_cross_entropy_f32, lib.peftlab_cross_entropy_bf16):
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3
        fn.restype = ctypes.c_int
    for fn in (lib.peftlab_gated_f32, lib.peftlab_gated_bf16):
        fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int, ctypes.c_uint64,
                                                                       ctypes.c_uint32, ctypes.c_float]
        fn.restype = None
    for fn in (lib.peftlab_gated_backward_f32, lib.peftlab_gated_backward_bf16):
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2 + [ctypes.c_int, ctypes.c_uint64,
                                                                       ctypes.c_uint32, ctypes.c_float]
        fn.restype = None
    return lib


def library() -> Optional[ctypes.CDLL]:
    """The compiled kernels, built on first call; None when they are off (``status()`` says why)."""
    global _lib, _why
    if _lib is not None or _why is not None:
        return _lib
    with _lock:
        if _lib is None and _why is None:
            if os.environ.get("PEFTLAB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
                _why = "switched off (PEFTLAB_NATIVE=0)"
            else:
                try:
                    _lib = _build()
                except Exception as e:  # no compiler, a failed build, an unloadable library
                    _why = f"{type(e).__name__}: {e}"
    return _lib


def status() -> str:
    """One line for ``peftlab env``: the kernels on (and where), or why they are off."""
    lib = library()
    return f"on ({lib._name})" if lib is not None else f"off: {_why}"


_KERNELS = {torch.float32: "peftlab_dropout_f32", torch.bfloat16: "peftlab_dropout_bf16"}


def handles(x: torch.Tensor) -> bool:
    """Whether ``dropout`` takes ``x``: a CPU float32/bfloat16 tensor, the kernels built."""
    return x.device.type == "cpu" and x.dtype in _KERNELS and library() is not None


def draw_seed() -> int:
    """A 64-bit seed from torch's default CPU generator (``torch.manual_seed`` repeats it)."""
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)) & (2**64 - 1)


def dropout(x: torch.Tensor, seed: int, cut: int, scale: float) -> torch.Tensor:
    """x·scale where the hash of (seed, index) keeps the element, 0 where its 16-bit uniform < cut."""
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    fn = getattr(library(), _KERNELS[x.dtype])
    src, dst = x.data_ptr(), out.data_ptr()
    threads, step = _threads_step(n)
    _split(lambda a, b: fn(src, dst, a, b, seed, cut, scale), n, threads, step)
    return out


_GATED = {torch.float32: "f32", torch.bfloat16: "bf16"}
GATED_ACTIVATIONS = ("silu", "gelu_tanh")


def handles_gated(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``gated`` takes ``a`` and ``b``: CPU tensors of one shape and dtype (float32 or
    bfloat16), the kernels built."""
    return (a.device.type == "cpu" and b.device.type == "cpu" and a.dtype in _GATED and b.dtype == a.dtype
            and a.shape == b.shape and library() is not None)


def _threads_step(n: int) -> tuple[int, int]:
    threads = min(torch.get_num_threads(), max(1, n // _MIN_SPLIT))
    return threads, ((n + threads - 1) // threads + 3) // 4 * 4  # a multiple of 4: one hash per 4 elements


def gated(a: torch.Tensor, b: torch.Tensor, act: str, seed: int = 0, cut: int = 0, scale: float = 1.0) -> torch.Tensor:
    """``act(a) * b`` (``act`` one of ``GATED_ACTIVATIONS``), then where ``cut`` > 0 dropped as
    ``dropout(·, seed, cut, scale)`` drops: 0 or the value times ``scale``."""
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty_like(a)
    fn = getattr(library(), f"peftlab_gated_{_GATED[a.dtype]}")
    pa, pb, po, gelu = a.data_ptr(), b.data_ptr(), out.data_ptr(), GATED_ACTIVATIONS.index(act)
    threads, step = _threads_step(a.numel())
    _split(lambda lo, hi: fn(pa, pb, po, lo, hi, gelu, seed, cut, scale), a.numel(), threads, step)
    return out


def gated_backward(g: torch.Tensor, a: torch.Tensor, b: torch.Tensor, act: str, seed: int = 0, cut: int = 0,
                   scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of ``gated(a, b, act, seed, cut, scale)`` with respect to a and b, given ``g``
    (the gradient of its output; cast to a's dtype)."""
    g, a, b = g.to(a.dtype).contiguous(), a.contiguous(), b.contiguous()
    da, db = torch.empty_like(a), torch.empty_like(b)
    fn = getattr(library(), f"peftlab_gated_backward_{_GATED[a.dtype]}")
    ptrs = (g.data_ptr(), a.data_ptr(), b.data_ptr(), da.data_ptr(), db.data_ptr())
    gelu = GATED_ACTIVATIONS.index(act)
    threads, step = _threads_step(a.numel())
    _split(lambda lo, hi: fn(*ptrs, lo, hi, gelu, seed, cut, scale), a.numel(), threads, step)
    return da, db


_CE_KERNELS = {torch.float32: "peftlab_cross_entropy_f32", torch.bfloat16: "peftlab_cross_entropy_bf16"}


def handles_cross_entropy(logits: torch.Tensor) -> bool:
    """Whether ``cross_entropy_`` takes ``logits``: CPU, float32/bfloat16, 2-D, contiguous, not
    needing grad (it writes in place), the kernels built."""
    return (logits.device.type == "cpu" and logits.dtype in _CE_KERNELS and logits.dim() == 2
            and logits.is_contiguous() and not logits.requires_grad and library() is not None)


def cross_entropy_(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy of ``logits`` (rows, V; CPU, float32 or bfloat16, contiguous) against
    ``labels`` (rows; every one in [0, V)), float32; ``logits`` becomes ``softmax - onehot`` (in its
    dtype), the gradient of each row's loss."""
    if not (logits.is_contiguous() and logits.dim() == 2 and logits.dtype in _CE_KERNELS):
        raise ValueError("cross_entropy_ takes a contiguous float32 or bfloat16 (rows, V) tensor")
    rows, vocab = logits.shape
    labels = labels.to(torch.int64).contiguous()
    if labels.shape != (rows,):
        raise ValueError(f"cross_entropy_: {tuple(labels.shape)} labels for {rows} rows")
    if rows and not (0 <= int(labels.min()) and int(labels.max()) < vocab):
        raise IndexError(f"cross_entropy_: a label outside [0, {vocab})")
    loss = torch.empty(rows, dtype=torch.float32)
    fn = getattr(library(), _CE_KERNELS[logits.dtype])
    x, y, out = logits.data_ptr(), labels.data_ptr(), loss.data_ptr()
    threads = min(torch.get_num_threads(), max(1, rows * vocab // _MIN_SPLIT), max(rows, 1))

    def run(a: int, b: int) -> None:
        if fn(x, y, out, a, b, vocab) != 0:
            raise MemoryError(f"cross_entropy_: no memory for a scratch row of {vocab} floats")

    _split(run, rows, threads, (rows + threads - 1) // threads)
    return loss


def _split(run, n: int, threads: int, step: int) -> None:
    """``run(a, b)`` over [0, n) in pieces of ``step``: the first on this thread, the rest on the pool."""
    global _pool
    if threads <= 1:
        run(0, n)
        return
    if _pool is None or _pool._max_workers < threads - 1:  # first use, or more torch threads since
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="peftlab-native")
    bounds = [(min(i * step, n), min((i + 1) * step, n)) for i in range(threads)]
    futures = [_pool.submit(run, a, b) for a, b in bounds[1:] if a < b]
    run(*bounds[0])
    for f in futures:
        f.result()
