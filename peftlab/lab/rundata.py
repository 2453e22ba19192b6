"""A run's data: its tasks' examples, rendered for the model kind and encoded as training reads them.

``load_examples`` gives ``(task index, example)`` rows over every task of ``data.task`` (each task
capped by a fixed-seed sample, the same for every method); ``encode_rows`` turns them into token
ids (a decoder's prompt and target in one sequence, the loss on the target only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from peftlab.errors import DataError
from peftlab.schema import DataSpec, RunConfig

if TYPE_CHECKING:
    from peftlab.tasks import Example


def load_examples(data: DataSpec, split: str, max_examples: Optional[int], causal: bool = False,
                  tokenizer=None) -> list[tuple[int, "Example"]]:
    """``(task index, example)`` rows of a split over the run's tasks; each task capped at
    ``max_examples`` by a fixed-seed sample, so every method sees the same rows. ``causal``: as a
    decoder (with ``tokenizer``, for a chat template) reads them (see ``for_decoder``)."""
    rows = []
    for t, task in enumerate(data.tasks):
        examples = task.examples(split, max_examples)
        if not examples:
            raise DataError(f"data.task {task.describe()}: split {split!r} is empty")
        rows += [(t, e) for e in examples]
    return for_decoder(data, rows, tokenizer) if causal else rows


def data_warnings(data: DataSpec, train_rows, test_rows) -> list[str]:
    """What makes a task's test scores mean less than they seem, one sentence each: test inputs that
    are also in train (scored on memory), and a classification split with one label only (a
    constant answer is then perfect: accuracy and F1 100)."""
    out = []
    for t, task in enumerate(data.tasks):
        train = [e for i, e in train_rows if i == t]
        test = [e for i, e in test_rows if i == t]
        seen = {e.source for e in train}
        both = sum(e.source in seen for e in test)
        if both:
            out.append(f"{task.describe()}: {both} of {len(test)} test inputs ({100 * both / len(test):.1f}%) are "
                       f"also train inputs: their scores measure memory, not generalisation")
        if task.kind == "classification":
            for split, rows in (("train", train), ("test", test)):
                labels = {e.target for e in rows}
                if len(labels) == 1:
                    out.append(f"{task.describe()}: every {split} example has the label {next(iter(labels))!r}"
                               + (": the model can only learn to say it" if split == "train" else
                                  ": a constant answer scores accuracy and F1 100; the scores decide nothing"))
    return out


def for_decoder(data: DataSpec, rows, tokenizer=None) -> list:
    """``rows`` rendered as a decoder reads them (a task may word its prompt differently, or render
    it with the model's ``tokenizer``: a chat template)."""
    out = []
    for t, e in rows:
        e = data.tasks[t].render_for_decoder(e)
        out.append((t, data.tasks[t].render_for_tokenizer(e, tokenizer) if tokenizer is not None else e))
    return out


def encode_rows(tok, data: DataSpec, rows, causal: bool):
    """Token ids for ``rows`` (see ``load_examples``), each task's prompt tail kept when cut; a
    decoder's rows with ``segments`` (chat) are encoded whole, the loss on their trained pieces."""
    from peftlab.data.chat import encode_segments
    from peftlab.data.seq2seq import Encoded, encode_pairs

    out = Encoded([], [], task_ids=[])
    for t, task in enumerate(data.tasks):
        mine = [e for i, e in rows if i == t]
        if not mine:
            continue
        if causal and all(e.segments is not None for e in mine):
            enc = encode_segments(tok, [e.segments for e in mine], data.max_source_length + data.max_target_length)
            enc.task_ids = [t] * len(enc)
        else:
            enc = encode_pairs(tok, [e.source for e in mine], [e.target for e in mine], data.max_source_length,
                               data.max_target_length, causal=causal, tail=task.prompt_tail, task_ids=[t] * len(mine))
        out.input_ids += enc.input_ids
        out.labels += enc.labels
        out.task_ids += enc.task_ids
        out.truncated_sources += enc.truncated_sources
        out.truncated_targets += enc.truncated_targets
        out.longest_source = max(out.longest_source, enc.longest_source)
    return out


def check_lengths(cfg: RunConfig, model) -> None:
    """A decoder sees prompt + target as one sequence: it must fit its position table."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if model.config.is_encoder_decoder or not limit:
        return
    need = cfg.data.max_source_length + cfg.data.max_target_length
    if need > limit:
        from peftlab.errors import ConfigError

        raise ConfigError(f"data.max_source_length + data.max_target_length = {need} exceeds the model's "
                          f"max_position_embeddings ({limit}); lower data.max_source_length")


def wants_task_ids(cfg: RunConfig) -> bool:
    """Some method (HyperFormer) conditions on each row's task: batches then carry ``task_ids``."""
    return any("task_ids" in getattr(m, "batch_keys", ()) for m in cfg.methods)
