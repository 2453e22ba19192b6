"""Pretraining objectives: T5 span corruption and causal-LM packing, as pure functions.

Span corruption (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer", §3.1.4): drop ``noise_density`` of the tokens in spans of mean length
``mean_span_length``; replace each dropped span in the input by a unique sentinel and ask the
decoder for ``sentinel span sentinel span ... </s>``:

    original  a b c d e f g h          noise = d e, h
    inputs    a b c <extra_id_0> f g <extra_id_1> </s>
    targets   <extra_id_0> d e <extra_id_1> h </s>

This follows t5.data.preprocessors (``random_spans_noise_mask``, ``random_spans_helper``): the
mask is an interleaving of non-noise and noise segments starting with non-noise, so every chunk
ends inside a noise span and targets end with ``</s>`` after the last span (no trailing sentinel,
unlike HF's run_t5_mlm_flax). Randomness comes only from the numpy Generator passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np


def random_spans_noise_mask(
    length: int, noise_density: float, mean_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean mask of shape ``(length,)``; True marks noise. Exactly ``round(length * density)``
    noise tokens (at least 1, at most length - 1) in ``round(noise / mean_span_length)`` spans."""
    if not 0.0 < noise_density < 1.0 or mean_span_length < 1.0:
        raise ValueError(f"need 0 < noise_density < 1 and mean_span_length >= 1, got "
                         f"{noise_density}, {mean_span_length}")
    original_length = length
    length = max(length, 2)  # as T5: build a mask for >= 2 tokens, then cut it to length
    num_noise, num_spans = _noise_counts(length, noise_density, mean_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    keep_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    lengths = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)  # keep, noise, keep, ...
    mask = np.repeat(np.tile([False, True], num_spans), lengths)
    return mask[:original_length]


def _noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a ``length >= 2`` sequence; T5's rounding, clamped so that
    every noise and non-noise segment is non-empty."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span_length), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random split of ``num_items`` into ``num_segments`` non-empty parts: lengths."""
    starts = rng.permutation(np.arange(num_items - 1) < num_segments - 1)  # a start after item i
    segment_id = np.concatenate([[0], np.cumsum(starts)])
    return np.bincount(segment_id, minlength=num_segments)


def span_corrupt(
    tokens: Sequence[int],
    sentinel_ids: Sequence[int],
    eos_id: int,
    rng: np.random.Generator,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> tuple[list[int], list[int]]:
    """One T5 example from ``tokens``: (inputs, targets), both ending with ``eos_id``."""
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_span_length, rng)
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    for i, (token, noise) in enumerate(zip(tokens, mask)):
        if noise and (i == 0 or not mask[i - 1]):
            span += 1
            if span >= len(sentinel_ids):
                raise ValueError(f"{span + 1}+ noise spans but only {len(sentinel_ids)} sentinels; "
                                 "use shorter sequences or a longer mean_span_length")
            inputs.append(sentinel_ids[span])
            targets.append(sentinel_ids[span])
        (targets if noise else inputs).append(token)
    return inputs + [eos_id], targets + [eos_id]


def reconstruct(
    inputs: Sequence[int], targets: Sequence[int], sentinel_ids: Sequence[int], eos_id: int
) -> list[int]:
    """Undo ``span_corrupt``: put each target span back where its sentinel stands in the inputs."""
    if not inputs or inputs[-1] != eos_id or not targets or targets[-1] != eos_id:
        raise ValueError("inputs and targets must each end with eos")
    sentinels = set(sentinel_ids)
    spans: dict[int, list[int]] = {}
    current = None
    for token in targets[:-1]:
        if token in sentinels:
            current = spans.setdefault(token, [])
        elif current is None:
            raise ValueError("targets must start with a sentinel")
        else:
            current.append(token)
    out: list[int] = []
    for token in inputs[:-1]:
        out.extend(spans[token] if token in sentinels else [token])
    return out


def compute_input_and_target_lengths(
    inputs_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(raw tokens to take, target length) so that corrupted inputs are exactly ``inputs_length``
    tokens, eos included (T5's ``random_spans_helper``)."""

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise, num_spans = _noise_counts(max(tokens_length, 2), noise_density,
                                             mean_noise_span_length)
        # inputs: kept tokens + one sentinel per span + eos; targets: noise + sentinels + eos
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    if inputs_length < 3:
        raise ValueError(f"inputs_length must be at least 3 (token, sentinel, eos), "
                         f"got {inputs_length}")
    tokens_length = inputs_length
    while lengths(tokens_length)[0] > inputs_length:  # only for tiny inputs_length
        tokens_length -= 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length, lengths(tokens_length)[1]


def pack_span_corruption(
    token_stream: Iterable[list[int]],
    inputs_length: int,
    sentinel_ids: Sequence[int],
    eos_id: int,
    rng: np.random.Generator,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> Iterator[tuple[list[int], list[int]]]:
    """Concatenate documents (each + eos), cut raw chunks, span-corrupt each chunk.

    Every input has exactly ``inputs_length`` tokens and every target exactly the length from
    ``compute_input_and_target_lengths``; the ragged tail of the stream is dropped.
    """
    raw_length, targets_length = compute_input_and_target_lengths(
        inputs_length, noise_density, mean_span_length)
    docs = (list(doc) + [eos_id] for doc in token_stream)
    for chunk in _windows(docs, raw_length):
        inputs, targets = span_corrupt(chunk, sentinel_ids, eos_id, rng, noise_density,
                                       mean_span_length)
        if len(inputs) != inputs_length or len(targets) != targets_length:
            raise ValueError(f"inputs_length={inputs_length} is too short for span corruption: "
                             f"got {len(inputs)} inputs, {len(targets)} targets")
        yield inputs, targets


def pack_causal(
    token_stream: Iterable[list[int]], seq_len: int, bos_id: int, eos_id: int
) -> Iterator[list[int]]:
    """``<s> doc </s> <s> doc </s> ...`` cut into consecutive ``seq_len`` windows (tail dropped)."""
    return _windows(([bos_id] + list(doc) + [eos_id] for doc in token_stream), seq_len)


def _windows(docs: Iterable[list[int]], size: int) -> Iterator[list[int]]:
    """Consecutive ``size``-token slices of the concatenated docs; a partial last one is dropped."""
    if size < 1:
        raise ValueError(f"window size must be positive, got {size}")
    buffer: list[int] = []
    for doc in docs:
        buffer.extend(doc)
        start = 0
        while len(buffer) - start >= size:  # an offset, not del per window: long docs stay linear
            yield buffer[start:start + size]
            start += size
        del buffer[:start]


# ------------------------------------------------------------------ array forms (large corpora)
# The same examples as pack_causal / pack_span_corruption (tested equal), built with numpy from
# documents held as integer arrays: a 100M-token corpus as Python lists would need ~4 GB.


def _stream(docs: Iterable[np.ndarray], head: Sequence[int], tail: Sequence[int]) -> np.ndarray:
    head, tail = np.asarray(head, dtype=np.int32), np.asarray(tail, dtype=np.int32)
    parts = [p for doc in docs for p in (head, np.asarray(doc, dtype=np.int32), tail)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def pack_causal_array(docs: Iterable[np.ndarray], seq_len: int, bos_id: int, eos_id: int) -> np.ndarray:
    """``pack_causal`` as one ``(windows, seq_len)`` int32 array."""
    if seq_len < 1:
        raise ValueError(f"window size must be positive, got {seq_len}")
    stream = _stream(docs, [bos_id], [eos_id])
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


def span_corrupt_array(chunk: np.ndarray, sentinel_ids: np.ndarray, eos_id: int, rng: np.random.Generator,
                       noise_density: float = 0.15, mean_span_length: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """``span_corrupt`` on an array, vectorised: the same mask (same draws from ``rng``), the same output."""
    mask = random_spans_noise_mask(len(chunk), noise_density, mean_span_length, rng)
    starts = mask & ~np.concatenate(([False], mask[:-1]))
    n_spans = int(starts.sum())
    if n_spans > len(sentinel_ids):
        raise ValueError(f"{n_spans}+ noise spans but only {len(sentinel_ids)} sentinels; "
                         "use shorter sequences or a longer mean_span_length")
    span_of = np.cumsum(starts) - 1
    inputs = np.where(starts, sentinel_ids[np.maximum(span_of, 0)], chunk)[~mask | starts]
    noise = np.flatnonzero(mask)
    targets = np.insert(chunk[noise], np.flatnonzero(starts[noise]), sentinel_ids[:n_spans])
    return np.append(inputs, eos_id).astype(np.int32), np.append(targets, eos_id).astype(np.int32)


def pack_span_corruption_array(docs: Iterable[np.ndarray], inputs_length: int, sentinel_ids: Sequence[int],
                               eos_id: int, rng: np.random.Generator, noise_density: float = 0.15,
                               mean_span_length: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """``pack_span_corruption`` as two int32 arrays, ``(n, inputs_length)`` and ``(n, target length)``."""
    raw_length, targets_length = compute_input_and_target_lengths(inputs_length, noise_density, mean_span_length)
    stream = _stream(docs, [], [eos_id])
    n = len(stream) // raw_length
    chunks = stream[: n * raw_length].reshape(n, raw_length)
    sentinels = np.asarray(sentinel_ids, dtype=np.int32)
    inputs = np.empty((n, inputs_length), dtype=np.int32)
    targets = np.empty((n, targets_length), dtype=np.int32)
    for i, chunk in enumerate(chunks):
        x, y = span_corrupt_array(chunk, sentinels, eos_id, rng, noise_density, mean_span_length)
        if len(x) != inputs_length or len(y) != targets_length:
            raise ValueError(f"inputs_length={inputs_length} is too short for span corruption: "
                             f"got {len(x)} inputs, {len(y)} targets")
        inputs[i], targets[i] = x, y
    return inputs, targets
