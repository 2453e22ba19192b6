"""Tokenised seq2seq examples and batches: encoding with counted truncation, padding, bucketing.

Batches are drawn in a deterministic order from ``(seed, epoch)``, so a run's data position is
just ``(epoch, index)`` and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """Token ids of a split, and how many sources/targets had to be truncated."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    truncated_sources: int = 0
    truncated_targets: int = 0
    longest_source: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


def _ids_with_eos(tokenizer, texts: Sequence[str], max_len: int) -> tuple[list[list[int]], int, int]:
    eos = tokenizer.eos_token_id
    out, truncated, longest = [], 0, 0
    for ids in tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]:
        if not ids or ids[-1] != eos:
            ids = ids + [eos]
        longest = max(longest, len(ids))
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + [eos]
            truncated += 1
        out.append(ids)
    return out, truncated, longest


def encode_pairs(tokenizer, sources: Sequence[str], targets: Sequence[str], max_source: int, max_target: int) -> Encoded:
    """Tokenise (source, target) pairs, ending each with EOS; truncation is counted, never silent."""
    src, n_src, longest = _ids_with_eos(tokenizer, sources, max_source)
    tgt, n_tgt, _ = _ids_with_eos(tokenizer, targets, max_target)
    enc = Encoded(src, tgt, n_src, n_tgt, longest)
    if n_src or n_tgt:
        log.info(
            "truncated %d of %d sources to %d tokens (longest %d) and %d targets to %d tokens",
            n_src, len(src), max_source, longest, n_tgt, max_target,
        )
    return enc


def collate(input_ids: list[list[int]], labels: list[list[int]] | None, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; labels are padded with -100 so the loss ignores them."""
    width = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for i, x in enumerate(input_ids):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        lw = max(len(y) for y in labels)
        lab = torch.full((len(labels), lw), -100, dtype=torch.long)
        for i, y in enumerate(labels):
            lab[i, : len(y)] = torch.tensor(y)
        batch["labels"] = lab
    return batch


@dataclass
class BatchPlan:
    """Deterministic, length-bucketed batch order over an encoded split, sharded across processes."""

    data: Encoded
    batch_size: int
    pad_id: int
    seed: int = 0
    bucket: int = 50  # batches per length-sorted bucket: less padding, still shuffled
    rank: int = 0
    world: int = 1
    _cache: dict = field(default_factory=dict, repr=False)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if epoch not in self._cache:
            rng = random.Random(self.seed * 1_000_003 + epoch)
            order = list(range(len(self.data)))
            rng.shuffle(order)
            span = self.batch_size * self.bucket
            batches = []
            for start in range(0, len(order), span):
                chunk = sorted(order[start : start + span], key=lambda i: len(self.data.input_ids[i]))
                batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
            rng.shuffle(batches)
            usable = len(batches) - len(batches) % self.world if len(batches) >= self.world else len(batches)
            self._cache = {epoch: batches[:usable][self.rank :: self.world]}
        return self._cache[epoch]

    def batches_per_epoch(self) -> int:
        return len(self.epoch_batches(0))

    def make_batch(self, rows: list[int], epoch: int = 0) -> dict[str, torch.Tensor]:
        return collate([self.data.input_ids[r] for r in rows], [self.data.labels[r] for r in rows], self.pad_id)

    def iterate(self, epoch: int = 0, index: int = 0) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
        """Yield ``(epoch, index, batch)`` forever, starting at a saved position."""
        while True:
            batches = self.epoch_batches(epoch)
            for i in range(index, len(batches)):
                yield epoch, i, self.make_batch(batches[i], epoch)
            epoch, index = epoch + 1, 0


def tokens_in(batch: dict[str, torch.Tensor], encoder_decoder: bool = True) -> int:
    """What tokens/s counts: source (non-pad) plus target tokens for an encoder-decoder; for a
    decoder the labels are the inputs themselves, so only the inputs count."""
    n = int(batch["attention_mask"].sum())
    if encoder_decoder and "labels" in batch:
        n += int((batch["labels"] != -100).sum())
    return n
