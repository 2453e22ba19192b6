"""Text classification from CSV / TSV / JSONL files a user brings, as text-to-text.

A directory holds ``train``, ``valid`` (or ``validation``/``dev``) and ``test`` files with one of the
endings ``.jsonl``, ``.csv``, ``.tsv``. ``text_columns`` name the input fields (one for single-text
tasks, two for pairs), ``label_column`` the label. Each label value maps to a *label word* that the
model learns to produce (T5 treats classification as text-to-text, Raffel et al. 2020). Evaluation
ranks the label words by their likelihood under the model (``eval: rank``: both T5 and decoders,
never an answer outside the label set) or decodes and normalises (``eval: generate``).
Scores: accuracy, macro-F1, and F1 of the positive class (label index 1) for binary tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from peftlab.data.textfile import csv_records, jsonl_records
from peftlab.errors import DataError
from peftlab.tasks.base import Example, TaskConfig, sample_rows

_SPLIT_FILES = {"train": ("train",), "valid": ("valid", "validation", "dev", "val"), "test": ("test",)}
_ENDINGS = (".jsonl", ".csv", ".tsv")


def find_split_file(root: Path, split: str) -> Path:
    """``root/<split>.{jsonl,csv,tsv}`` (``valid`` also as ``validation``/``dev``); DataError if absent."""
    if root.is_file():
        return root
    names = _SPLIT_FILES.get(split, (split,))
    for stem in names:
        for end in _ENDINGS:
            if (root / f"{stem}{end}").is_file():
                return root / f"{stem}{end}"
    raise DataError(f"{root}: no {split} split (looked for {', '.join(s + '.{jsonl,csv,tsv}' for s in names)})")


def read_records(path: Path, fieldnames: Optional[Sequence[str]] = None) -> list[tuple[int, dict]]:
    """``(line number, record)`` rows of a JSONL, CSV or TSV file; errors name ``file:line``.
    ``fieldnames``: the columns of a CSV/TSV file without a header row (GLUE's CoLA)."""
    if path.suffix == ".jsonl":
        rows = jsonl_records(path)
    else:
        rows = csv_records(path, tsv=path.suffix == ".tsv", fieldnames=fieldnames)
    if not rows:
        raise DataError(f"{path}: no examples (empty split)")
    return rows


def _normalise(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


@dataclass(frozen=True)
class ClassifyTask(TaskConfig):
    name = "classify"
    kind = "classification"
    primary_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1", "f1")

    path: str = ""  # a directory with train/valid/test .jsonl/.csv/.tsv files
    text_columns: tuple[str, ...] = ("text",)  # input fields (two for sentence-pair tasks)
    label_column: str = "label"
    labels: Optional[tuple[str, ...]] = None  # label values as in the data, in index order; None = sorted from train
    label_words: Optional[tuple[str, ...]] = None  # what the model says for each label; None = the values
    template: Optional[str] = None  # prompt over the text columns, e.g. "{premise} Question: {hypothesis}"
    eval: Literal["rank", "generate"] = "rank"  # rank the label words by likelihood, or decode + normalise
    title: Optional[str] = None  # name in tables (default: the directory's name)

    def __post_init__(self):
        from peftlab.config import FieldError

        if not self.path:
            raise FieldError("path", "classify needs a path: a directory with train/valid/test files")
        if not self.text_columns:
            raise FieldError("text_columns", "name at least one input column")
        if self.label_words is not None and self.labels is not None and len(self.label_words) != len(self.labels):
            raise FieldError("label_words", f"{len(self.label_words)} words for {len(self.labels)} labels")
        if self.label_words is not None and len({_normalise(w) for w in self.label_words}) != len(self.label_words):
            raise FieldError("label_words", "label words must differ after normalisation (lower case, no punctuation)")
        if self.template is not None:
            import string

            names = {n for _, n, _, _ in string.Formatter().parse(self.template) if n is not None}
            unknown = names - set(self.text_columns)
            if unknown:
                raise FieldError("template", f"uses {sorted(unknown)}, which are not text_columns {list(self.text_columns)}")

    def describe(self) -> str:
        return self.title or Path(self.path).name or self.name

    @property
    def template_text(self) -> str:
        if self.template is not None:
            return self.template
        return "\n".join(f"{c}: {{{c}}}" for c in self.text_columns) + "\nlabel:"

    @property
    def prompt_tail(self) -> str:
        import string

        parts = list(string.Formatter().parse(self.template_text))
        return parts[-1][0] if parts and parts[-1][1] is None else ""

    def _file(self, split: str) -> Path:
        return find_split_file(Path(self.path), split)

    def label_values(self) -> list[str]:
        if self.labels is not None:
            return list(self.labels)
        path = self._file("train")
        values = {str(rec.get(self.label_column)) for _, rec in read_records(path) if self.label_column in rec}
        if not values:
            raise DataError(f"{path}: no record has the label column {self.label_column!r}")
        return sorted(values)

    def choices(self) -> list[str]:
        return list(self.label_words) if self.label_words is not None else self.label_values()

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        path = self._file(split)
        return sample_rows(self.to_examples(path, read_records(path)), limit)

    def to_examples(self, path: Path, records: Sequence[tuple[int, dict]]) -> list[Example]:
        """``(line, record)`` rows of ``path`` as examples; errors name the file, line and column."""
        values = self.label_values()
        index = {v: i for i, v in enumerate(values)}
        words = self.choices()
        out = []
        for line, rec in records:
            missing = [c for c in (*self.text_columns, self.label_column) if c not in rec]
            if missing:
                raise DataError(f"{path}:{line}: missing column {missing[0]!r} (has: {', '.join(sorted(rec))})")
            value = str(rec[self.label_column])
            if value not in index:
                raise DataError(f"{path}:{line}: label {value!r} is not one of {values}")
            fields = {c: " ".join(str(rec[c]).split()) for c in self.text_columns}
            label = index[value]
            out.append(Example(self.template_text.format(**fields), words[label], {"line": line}, label))
        return out

    def split_files(self, split: str) -> list[str]:
        return [str(self._file(split))]


    def predict_label(self, text: str) -> int:
        """The label a decoded text names (-1 when it names none): exact match after normalising."""
        norm = _normalise(text)
        for i, w in enumerate(self.choices()):
            if norm == _normalise(w):
                return i
        return -1

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, Any]:
        from peftlab.evaluate.metrics import classification_metrics

        pred = [self.predict_label(p) for p in predictions]
        return classification_metrics(pred, [e.label for e in examples], len(self.choices()))

    def row_stats(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        from peftlab.evaluate.rows import classification_rows

        return classification_rows([self.predict_label(p) for p in predictions], [e.label for e in examples],
                                   len(self.choices()))
