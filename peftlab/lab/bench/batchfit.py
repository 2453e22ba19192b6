"""The largest batch that fits: the seeds' protocol of a batch size "auto adjusted based on the GPU
resources remaining" (seed 000: 1 to 5 per GPU, by method), used by ``peftlab bench`` when its spec
says ``batch_size: {fit: true}``.

Every candidate is measured on the worst case the run can meet: a batch of sequences as long as
the config allows (``data.max_source_length`` tokens in, ``data.max_target_length`` out; a decoder
reads both as one sequence), with the run's methods applied and its precision.

* **CUDA**: try it. Forward, backward and an optimizer step (AdamW allocates its moments on the
  first) at doubling sizes until one runs out of memory, then bisect between the last that fitted
  and the first that did not. ``torch.cuda.OutOfMemoryError`` is caught and the cache emptied.
* **CPU**: running out of RAM kills the process instead of raising, so estimate. The tensors
  autograd saves for backward are counted exactly (``torch.autograd.graph.saved_tensors_hooks``) for
  batches of 1 and 2; their difference is the activation memory of one more example. A training
  step needs the weights, the trainable parameters' gradients and two AdamW moments, plus the
  saved activations and, during backward, about as much again in activation gradients (hence
  ``ACTIVATION_FACTOR`` = 2). The batch is the largest whose estimate stays under
  ``memory_fraction`` of the RAM available now (``MemAvailable``, read once: other processes'
  use can change it later, which is why the fraction is below 1).

What was chosen and why is returned (and ``peftlab bench`` keeps it in ``batch_fit.json``).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

ACTIVATION_FACTOR = 2.0  # saved activations + their gradients in backward (CPU estimate)


def worst_case_batch(cfg, causal: bool, batch_size: int, vocab_size: int) -> dict:
    """A batch of ``batch_size`` rows at the config's longest source and target (random token ids
    that are never padding, so nothing is masked away)."""
    import torch

    g = torch.Generator().manual_seed(0)
    low = 3  # above pad/eos/unk in every peftlab tokenizer
    src, tgt = cfg.data.max_source_length, cfg.data.max_target_length
    if causal:
        ids = torch.randint(low, vocab_size, (batch_size, src + tgt), generator=g)
        labels = ids.clone()
        labels[:, :src] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    ids = torch.randint(low, vocab_size, (batch_size, src), generator=g)
    labels = torch.randint(low, vocab_size, (batch_size, tgt), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def fit_batch_size(cfg, *, max_batch: int = 256, min_batch: int = 1, memory_fraction: float = 0.8,
                   steps: int = 2) -> dict:
    """``{"batch_size", "how", ...}``: the largest batch in ``[min_batch, max_batch]`` that fits on
    the device the run would use (see the module docstring). The model is built and dropped here."""
    import gc

    import torch

    from peftlab.device import resolve_precision
    from peftlab.lab.run import build

    loaded, state = build(cfg)
    model = loaded.model
    causal = loaded.family.kind == "causal"
    device = _device(cfg)
    precision = resolve_precision(cfg.train.mixed_precision, device)
    vocab = int(model.get_input_embeddings().num_embeddings)
    try:
        model.to(device)
        model.train()
        make = lambda b: worst_case_batch(cfg, causal, b, vocab)  # noqa: E731
        if device.type == "cuda":
            found = _probe_cuda(model, make, device, precision, cfg.train.lr, max_batch, min_batch, steps)
        else:
            found = _estimate_cpu(model, make, device, precision, max_batch, min_batch, memory_fraction)
    finally:
        del model, loaded, state
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {**found, "device": str(device), "precision": precision, "max_source_length": cfg.data.max_source_length,
            "max_target_length": cfg.data.max_target_length}


def _device(cfg):
    import torch

    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _autocast(device, precision: str):
    import contextlib

    import torch

    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def _trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def _step(model, batch: dict, device, precision: str, optimizer=None) -> None:
    batch = {k: v.to(device) for k, v in batch.items()}
    with _autocast(device, precision):
        loss = model(**batch).loss
    if optimizer is not None and loss.requires_grad:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------- CUDA


def _probe_cuda(model, make, device, precision, lr, max_batch, min_batch, steps) -> dict:
    import torch

    params = _trainable(model)
    optimizer = torch.optim.AdamW(params, lr=lr) if params else None
    tried: dict[int, bool] = {}

    def fits(b: int) -> bool:
        if b not in tried:
            try:
                for _ in range(steps):
                    _step(model, make(b), device, precision, optimizer)
                torch.cuda.synchronize(device)
                tried[b] = True
            except torch.cuda.OutOfMemoryError:
                tried[b] = False
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        return tried[b]

    good = largest_fitting(fits, min_batch, max_batch)
    if not good:
        log.warning("batch fit: even batch size %d runs out of GPU memory; using it anyway", min_batch)
    peak = torch.cuda.max_memory_allocated(device)
    return {"batch_size": good or min_batch, "how": "cuda probe (forward + backward + AdamW step)",
            "tried": {str(k): v for k, v in sorted(tried.items())}, "peak_allocated_bytes": int(peak),
            "total_bytes": int(torch.cuda.get_device_properties(device).total_memory)}


def largest_fitting(fits, low: int, high: int) -> int:
    """The largest b in [low, high] with ``fits(b)``, assuming that a batch that fits makes every
    smaller one fit: doubling from ``low`` to the first failure (or ``high``), then bisection. 0 when
    not even ``low`` fits. Each size is tried at most once by a caller that caches, as ``_probe_cuda`` does."""
    good, bad, b = 0, None, low
    while b <= high:
        if not fits(b):
            bad = b
            break
        good, b = b, b * 2
    if good and bad is None and good < high:  # doubling stepped over high: try high itself
        good, bad = (high, None) if fits(high) else (good, high)
    while good and bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


# ----------------------------------------------------------------------------------------- CPU


def saved_activation_bytes(model, batch: dict, device, precision: str) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass of ``batch`` (each
    storage counted once: views of one tensor share it)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # a tensor without storage (meta, sparse)
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        batch = {k: v.to(device) for k, v in batch.items()}
        with _autocast(device, precision):
            loss = model(**batch).loss
    del loss
    return sum(seen.values())


def available_ram() -> int:
    """Bytes of RAM available to a new allocation now (``MemAvailable``; psutil where no /proc)."""
    from peftlab.device import proc_kib_field

    available = proc_kib_field("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    import psutil

    return int(psutil.virtual_memory().available)


def cpu_estimate(fixed: int, per_example: int, available: int, memory_fraction: float, max_batch: int,
                 min_batch: int) -> int:
    """The largest batch b in [min_batch, max_batch] with fixed + b·per_example <= fraction·available."""
    room = memory_fraction * available - fixed
    if per_example <= 0:
        return max_batch
    return int(min(max_batch, max(min_batch, room // per_example)))


def _estimate_cpu(model, make, device, precision, max_batch, min_batch, memory_fraction) -> dict:
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() * 4 for p in _trainable(model))  # fp32 gradients
    optimizer = 2 * trainable  # AdamW's two moments
    one = saved_activation_bytes(model, make(1), device, precision)
    two = saved_activation_bytes(model, make(2), device, precision)
    per_example = int(ACTIVATION_FACTOR * max(two - one, 0))
    fixed = weights + trainable + optimizer + int(ACTIVATION_FACTOR * max(2 * one - two, 0))
    available = available_ram()
    b = cpu_estimate(fixed, per_example, available, memory_fraction, max_batch, min_batch)
    return {"batch_size": b, "how": "cpu estimate (weights + gradients + AdamW moments + "
                                     f"{ACTIVATION_FACTOR:g} x saved activations)",
            "fixed_bytes": fixed, "per_example_bytes": per_example, "available_bytes": available,
            "memory_fraction": memory_fraction, "estimated_bytes": fixed + b * per_example}
