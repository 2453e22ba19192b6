"""The task protocol: what a run needs to know about a dataset, and nothing more.

A task is a frozen config dataclass (its options, typed and validated like a method's) that knows
how to read or build its splits, how an example reads as model input and target, and how its
predictions are scored. ``peftlab.lab.run`` and the training loop never look inside a task.

* ``examples(split)`` -> ``Example`` rows. ``Example.source`` is the rendered model input (the prompt),
  ``Example.target`` the reference text (for classification, the label's word), ``Example.meta``
  whatever identifies the row in ``predictions.jsonl``.
* The same rendering serves an encoder-decoder (source -> encoder, target -> decoder) and a decoder
  (``source`` then ``target`` in one sequence, loss on the target only). A task whose prompt reads
  differently for decoders overrides ``render_for_decoder``; one whose decoder text depends on the
  model's tokenizer (a chat template) overrides ``render_for_tokenizer``, and may give a decoder its
  whole training text as ``segments``, the loss on the pieces marked (chat: every assistant turn).
* ``kind`` says how it is evaluated: ``generation`` (decode, then ``metrics``), ``classification``
  (rank the label words by likelihood, or decode and normalise; then accuracy / F1).
* ``prompt_tail`` is the fixed text after the last template field: when a prompt is too long the
  middle is cut and this tail kept, so the instruction that ends a prompt is never truncated away.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from peftlab.config import NamedConfig


@dataclass(frozen=True)
class Example:
    source: str  # the model input, rendered
    target: str  # the reference output (for classification: the label word)
    meta: dict = field(default_factory=dict)  # identifies the row in predictions.jsonl
    label: int | None = None  # classification: index into ``TaskConfig.choices()``
    shown: str | None = None  # the input as a reader sees it (code2doc: the function, no prompt); None: source
    messages: tuple | None = None  # chat data: the conversation ({role, content} turns), its last reply the target
    # a decoder's whole training text as (text, trained) pieces (peftlab.data.chat); None: source, then target
    segments: tuple | None = None


def sample_rows(rows: list, limit: int | None) -> list:
    """At most ``limit`` of ``rows``, drawn with a fixed seed: every method and run sees the same."""
    import random

    if limit is None or len(rows) <= limit:
        return rows
    return random.Random(0).sample(rows, limit)


@dataclass(frozen=True)
class TaskConfig(NamedConfig):
    """Base of every task's config: a frozen dataclass with a registry ``name``."""

    kind: ClassVar[str] = "generation"  # "generation" or "classification"
    primary_metric: ClassVar[str] = ""  # the column a report ranks by (higher is better)
    metric_names: ClassVar[tuple[str, ...]] = ()  # every metric ``metrics`` returns

    @classmethod
    def dispatch(cls, name: str) -> type["TaskConfig"]:
        from peftlab.tasks.registry import get_task

        return get_task(name)


    def describe(self) -> str:
        """Short label for tables (the task's name unless a subclass says more)."""
        return self.name

    # --- data ---------------------------------------------------------------------------------
    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        """The examples of ``split`` ("train", "valid", "test"); DataError if it is missing or empty.
        ``limit``: at most this many, a fixed-seed sample (``sample_rows``), the same for every run."""
        raise NotImplementedError

    def render_for_decoder(self, example: Example) -> Example:
        """The example as a decoder reads it (default: the same prompt)."""
        return example

    def render_for_tokenizer(self, example: Example, tokenizer) -> Example:
        """The example (as ``render_for_decoder`` gave it) as a decoder with ``tokenizer`` reads it, where
        that depends on the tokenizer (a chat template); default: unchanged."""
        return example

    @property
    def prompt_tail(self) -> str:
        return ""

    def split_files(self, split: str) -> list[str]:
        """The files ``split`` reads (a run fingerprints them, so a later eval on changed data says so)."""
        return []

    def resolved(self, base_dir) -> "TaskConfig":
        """A copy with relative paths made absolute against ``base_dir`` (run creation time): the
        ``path`` field (unless ``stdlib``), and ``test_source`` where it names an existing directory
        (it may also name an installed package)."""
        from pathlib import Path

        changes, base = {}, Path(base_dir)
        for name in ("path", "test_source"):
            value = getattr(self, name, None)
            if not value or value == "stdlib" or Path(value).is_absolute():
                continue
            if name == "path" or (base / value).is_dir():
                changes[name] = str((base / value).resolve())
        return dataclasses.replace(self, **changes) if changes else self

    # --- evaluation ---------------------------------------------------------------------------
    def choices(self) -> list[str] | None:
        """Classification: the label words, in label-index order (None for generation)."""
        return None

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, Any]:
        """Scores of ``predictions`` (one string per example) against the examples' targets."""
        raise NotImplementedError

    def row_stats(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        """Per-row statistics of the metrics (``peftlab.evaluate.rows``: what intervals and paired tests
        resample). Default: each mean metric from the task's metric on each row alone, corpus BLEU from
        its counts; a task whose metrics are of another kind (classification, micro counts) overrides."""
        from peftlab.evaluate.rows import by_single_rows

        return by_single_rows(self.metrics, predictions, examples, self.metric_names)
