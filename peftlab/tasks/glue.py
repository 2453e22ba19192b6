"""GLUE (Wang et al. 2018) and SuperGLUE (Wang et al. 2019) classification benchmarks, read from
their official files as distributed: presets over the ``classify`` task (columns, label values,
label words and a prompt per benchmark).

``{name: glue, benchmark: rte, path: DIR}`` where DIR holds the benchmark's files: GLUE's
``train.tsv`` / ``dev.tsv`` (MNLI: ``dev_matched.tsv``; CoLA's have no header row), SuperGLUE's
``train.jsonl`` / ``val.jsonl``. RTE is read from either layout. The official test files carry no
labels, so the splits follow the protocol of Mahabadi et al. (2021, HyperFormer) and Compacter: a
benchmark with fewer than 10,000 training rows has its dev set halved (one half validation, the
other test); a larger one keeps 1,000 training rows aside for validation and tests on dev. The
halves and the 1,000 rows are drawn with a fixed seed, so every run sees the same.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Optional, Sequence

from peftlab.errors import DataError
from peftlab.tasks.base import Example, TaskConfig, sample_rows
from peftlab.tasks.classify import ClassifyTask, read_records


@dataclass(frozen=True)
class Layout:
    """One benchmark's files and columns."""

    train: str  # file names in the benchmark's directory
    dev: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...]  # label values as the files write them, in index order (index 1 = positive)
    label_words: tuple[str, ...]  # what the model says for each
    template: str  # over the text columns
    header: Optional[tuple[str, ...]] = None  # column names of a file without a header row


# the shorter text first: a prompt too long for the model loses its middle, so a long premise or
# passage is what gets cut, never the hypothesis or the question
_NLI = "Hypothesis: {hypothesis}\nPremise: {premise}\nIs the hypothesis true?"
_ENTAIL = dict(labels=("not_entailment", "entailment"), label_words=("false", "true"))
PRESETS: dict[str, tuple[Layout, ...]] = {
    "rte": (Layout("train.jsonl", "val.jsonl", ("premise", "hypothesis"), "label", template=_NLI, **_ENTAIL),
            Layout("train.tsv", "dev.tsv", ("sentence1", "sentence2"), "label",
                   template="Hypothesis: {sentence2}\nPremise: {sentence1}\nIs the hypothesis true?", **_ENTAIL)),
    "mrpc": (Layout("train.tsv", "dev.tsv", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("no", "yes"),
                    "Sentence 1: {#1 String}\nSentence 2: {#2 String}\nDo they mean the same?"),),
    "sst2": (Layout("train.tsv", "dev.tsv", ("sentence",), "label", ("0", "1"), ("negative", "positive"),
                    "{sentence}\nSentiment:"),),
    "cola": (Layout("train.tsv", "dev.tsv", ("sentence",), "label", ("0", "1"), ("unacceptable", "acceptable"),
                    "{sentence}\nIs this sentence grammatical?", header=("source", "label", "author_label", "sentence")),),
    "qnli": (Layout("train.tsv", "dev.tsv", ("question", "sentence"), "label", template=(
        "Question: {question}\nSentence: {sentence}\nDoes the sentence answer the question?"), **_ENTAIL),),
    "qqp": (Layout("train.tsv", "dev.tsv", ("question1", "question2"), "is_duplicate", ("0", "1"), ("no", "yes"),
                   "Question 1: {question1}\nQuestion 2: {question2}\nSame question?"),),
    "mnli": (Layout("train.tsv", "dev_matched.tsv", ("sentence1", "sentence2"), "gold_label",
                    ("entailment", "neutral", "contradiction"), ("yes", "maybe", "no"),
                    "Hypothesis: {sentence2}\nPremise: {sentence1}\nIs the hypothesis true? Yes, no, or maybe?"),),
    "boolq": (Layout("train.jsonl", "val.jsonl", ("passage", "question"), "label", ("False", "True"), ("no", "yes"),
                     "Question: {question}?\nPassage: {passage}\nAnswer:"),),
    "cb": (Layout("train.jsonl", "val.jsonl", ("premise", "hypothesis"), "label",
                  ("entailment", "contradiction", "neutral"), ("yes", "no", "maybe"), _NLI + " Yes, no, or maybe?"),),
}
SMALL = 10_000  # training rows under which dev is halved into validation and test
VALID_FROM_TRAIN = 1_000


@dataclass(frozen=True)
class GlueTask(TaskConfig):
    name = "glue"
    kind = "classification"
    primary_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1", "f1")

    benchmark: Literal["rte", "mrpc", "sst2", "cola", "qnli", "qqp", "mnli", "boolq", "cb"] = "rte"
    path: str = ""  # the benchmark's directory, as distributed (train.tsv/dev.tsv or train.jsonl/val.jsonl)
    label_words: Optional[tuple[str, ...]] = None  # None = the preset's
    template: Optional[str] = None  # None = the preset's; fields: the benchmark's text columns
    eval: Literal["rank", "generate"] = "rank"  # rank the label words by likelihood, or decode + normalise

    def __post_init__(self):
        from peftlab.config import FieldError

        if not self.path:
            raise FieldError("path", f"glue needs a path: the directory of {self.benchmark}'s files")
        errors = []
        for layout in PRESETS[self.benchmark]:  # label_words and template must fit one of its layouts
            try:
                self._classify_for(layout)
                break
            except FieldError as e:
                errors.append(e)
        else:
            raise errors[0]

    def describe(self) -> str:
        return self.benchmark

    @cached_property
    def layout(self) -> Layout:
        root = Path(self.path)
        for layout in PRESETS[self.benchmark]:
            if (root / layout.train).is_file():
                return layout
        wanted = " or ".join(f"{lay.train} + {lay.dev}" for lay in PRESETS[self.benchmark])
        raise DataError(f"data.task.path: {root} has no {self.benchmark} files (looked for {wanted})")

    def _classify_for(self, layout: Layout) -> ClassifyTask:
        return ClassifyTask(path=self.path, text_columns=layout.text_columns, label_column=layout.label_column,
                            labels=layout.labels, label_words=self.label_words or layout.label_words,
                            template=self.template or layout.template, eval=self.eval, title=self.benchmark)

    @cached_property
    def classify(self) -> ClassifyTask:
        return self._classify_for(self.layout)

    def _rows(self, file: str) -> tuple[Path, list]:
        path = Path(self.path) / file
        if not path.is_file():
            raise DataError(f"{path}: missing ({self.benchmark} needs {self.layout.train} and {self.layout.dev})")
        return path, read_records(path, self.layout.header)

    def split_rows(self, split: str) -> tuple[Path, list]:
        """``(file, (line, record) rows)`` of a split under the protocol above."""
        split = {"validation": "valid", "dev": "valid", "val": "valid"}.get(split, split)
        if split not in ("train", "valid", "test"):
            raise DataError(f"unknown split {split!r}; expected train, valid or test")
        train_path, train = self._rows(self.layout.train)
        if split == "train" and len(train) < SMALL:
            return train_path, train
        if len(train) >= SMALL and split != "test":
            aside = set(random.Random(0).sample(range(len(train)), VALID_FROM_TRAIN))
            return train_path, [r for i, r in enumerate(train) if (i in aside) == (split == "valid")]
        dev_path, dev = self._rows(self.layout.dev)
        if len(train) >= SMALL:
            return dev_path, dev
        order = list(range(len(dev)))
        random.Random(0).shuffle(order)
        half = set(order[: (len(dev) + 1) // 2])
        return dev_path, [r for i, r in enumerate(dev) if (i in half) == (split == "valid")]

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        path, rows = self.split_rows(split)
        if not rows:
            raise DataError(f"{path}: no {self.benchmark} rows for split {split!r}")
        return sample_rows(self.classify.to_examples(path, rows), limit)

    @property
    def prompt_tail(self) -> str:
        return self.classify.prompt_tail

    def choices(self) -> list[str]:
        return self.classify.choices()

    def predict_label(self, text: str) -> int:
        return self.classify.predict_label(text)

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        return self.classify.metrics(predictions, examples)

    def row_stats(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        return self.classify.row_stats(predictions, examples)

    def split_files(self, split: str) -> list[str]:
        # validation and test are carved from dev (or train) by size, so every split reads both
        return [str(Path(self.path) / f) for f in (self.layout.train, self.layout.dev)]

