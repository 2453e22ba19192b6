"""Sequence-to-sequence data a user brings: summarisation or translation pairs in JSONL (or CSV/TSV).

A directory holds ``train``, ``valid`` (or ``validation``/``dev``/``val``) and ``test`` files;
``source_field`` and ``target_field`` name the input and output (``document``/``summary`` for
XSum-style files, ``en``/``de`` for a translation pair...). ``template`` puts the source into a
prompt (``"summarize: {source}"`` is T5's own prefix). Scores: sacrebleu corpus BLEU and chrF (for
translation), ROUGE-1/2/L F-measures (for summaries); ``primary`` says which one ranks methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

from peftlab.errors import DataError
from peftlab.tasks.base import Example, TaskConfig, sample_rows
from peftlab.tasks.classify import find_split_file, read_records
from peftlab.tasks.source import check_template, template_tail


@dataclass(frozen=True)
class Seq2SeqTask(TaskConfig):
    name = "seq2seq"
    kind = "generation"
    metric_names = ("bleu", "chrf", "rouge_1", "rouge_2", "rouge_l")

    path: str = ""  # a directory with train/valid/test .jsonl (or .csv/.tsv) files
    source_field: str = "source"
    target_field: str = "target"
    template: str = "{source}"  # prompt; field: {source} (e.g. "summarize: {source}")
    primary: Literal["rouge_l", "bleu", "chrf", "rouge_1", "rouge_2"] = "rouge_l"  # the metric that ranks methods
    title: Optional[str] = None  # name in tables (default: the directory's name)

    def __post_init__(self):
        from peftlab.config import FieldError

        if not self.path:
            raise FieldError("path", "seq2seq needs a path: a directory with train/valid/test files")
        if self.source_field == self.target_field:
            raise FieldError("target_field", f"is the source field too ({self.source_field!r})")
        check_template(self.template, ("source",))

    @property
    def primary_metric(self) -> str:  # an instance setting here (the base class has a constant)
        return self.primary

    def describe(self) -> str:
        return self.title or Path(self.path).name or self.name

    @property
    def prompt_tail(self) -> str:
        return template_tail(self.template, after="source")

    def _file(self, split: str) -> Path:
        return find_split_file(Path(self.path), {"val": "valid", "dev": "valid", "validation": "valid"}.get(split, split))

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        path = self._file(split)
        out = []
        for line, rec in read_records(path):
            missing = [c for c in (self.source_field, self.target_field) if c not in rec]
            if missing:
                raise DataError(f"{path}:{line}: missing field {missing[0]!r} (has: {', '.join(sorted(rec))})")
            source, target = (" ".join(str(rec[c]).split()) for c in (self.source_field, self.target_field))
            out.append(Example(self.template.format(source=source), target, {"line": line}))
        return sample_rows(out, limit)

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        from peftlab.evaluate.metrics import chrf, corpus_bleu, rouge_scores

        preds, refs = list(predictions), [e.target for e in examples]
        return {"bleu": corpus_bleu(preds, refs), "chrf": chrf(preds, refs), **rouge_scores(preds, refs)}

    def split_files(self, split: str) -> list[str]:
        return [str(self._file(split))]

