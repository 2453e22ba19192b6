"""Tokenised seq2seq examples and batches: encoding with counted truncation, padding, bucketing.

Batches are drawn in a deterministic order from ``(seed, epoch)``, so a run's data position is
just ``(epoch, index)`` and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """Token ids of a split, and how many sources/targets had to be truncated.

    For an encoder-decoder ``input_ids`` is the source and ``labels`` the target. For a decoder both
    are one sequence (``[bos] prompt target eos``) and ``labels`` is it with the prompt masked to
    -100, so the loss falls on the target only."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    truncated_sources: int = 0
    truncated_targets: int = 0
    longest_source: int = 0
    task_ids: Optional[list[int]] = None  # multi-task: each row's task index

    def __len__(self) -> int:
        return len(self.input_ids)


def tail_tokens(tokenizer, tail: str) -> int:
    """How many tokens the fixed end of a prompt template takes (kept when a prompt is cut)."""
    return len(tokenizer(tail, add_special_tokens=False)["input_ids"]) if tail.strip() else 0


def _cut_middle(ids: list[int], max_len: int, keep_tail: int) -> list[int]:
    """``ids`` cut to ``max_len`` by dropping tokens before the last ``keep_tail`` (the instruction
    that ends a prompt survives; what is lost is the end of the code or text before it)."""
    keep_tail = min(keep_tail, max_len // 2)
    return ids[: max_len - keep_tail] + (ids[len(ids) - keep_tail:] if keep_tail else [])


def prompt_ids(tokenizer, texts: Sequence[str], max_len: int, *, causal: bool = False,
               keep_tail: int = 0) -> tuple[list[list[int]], int, int]:
    """Model inputs for prompts, and (count truncated, longest length before truncation).

    Encoder inputs end with EOS (as T5 was trained); decoder prompts start with BOS (where the
    tokenizer has one) and do not end: the target or the generation continues them."""
    eos, bos = tokenizer.eos_token_id, getattr(tokenizer, "bos_token_id", None)
    out, truncated, longest = [], 0, 0
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        if causal:
            ids = ([bos] if bos is not None else []) + ids
            body, end = ids, []
        else:
            body, end = ids, [eos]
        longest = max(longest, len(body) + len(end))
        if len(body) + len(end) > max_len:
            body = _cut_middle(body, max_len - len(end), keep_tail)
            truncated += 1
        out.append(body + end)
    return out, truncated, longest


def encode_pairs(tokenizer, sources: Sequence[str], targets: Sequence[str], max_source: int, max_target: int,
                 *, causal: bool = False, tail: str = "", task_ids: Optional[Sequence[int]] = None) -> Encoded:
    """Tokenise (source, target) pairs; truncation is counted, never silent (see ``Encoded``).

    ``tail``: the prompt template's fixed ending, kept when a source is too long."""
    src, n_src, longest = prompt_ids(tokenizer, sources, max_source, causal=causal,
                                     keep_tail=tail_tokens(tokenizer, tail))
    tgt, n_tgt, _ = prompt_ids(tokenizer, targets, max_target)  # target + eos, cut at the end
    if causal:
        inputs = [s + t for s, t in zip(src, tgt)]
        labels = [[-100] * len(s) + t for s, t in zip(src, tgt)]
    else:
        inputs, labels = src, tgt
    enc = Encoded(inputs, labels, n_src, n_tgt, longest, list(task_ids) if task_ids is not None else None)
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
    with_task_ids: bool = False  # add each row's task index as ``task_ids`` (a method consumes it)
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
        batch = collate([self.data.input_ids[r] for r in rows], [self.data.labels[r] for r in rows], self.pad_id)
        if self.with_task_ids and self.data.task_ids is not None:
            batch["task_ids"] = torch.tensor([self.data.task_ids[r] for r in rows], dtype=torch.long)
        return batch

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
