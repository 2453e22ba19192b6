"""Instruction tuning (Alpaca, Taori et al. 2023; dolly-15k, Conover et al. 2023): an instruction and
an optional input in a prompt template, the response as the target; the loss falls on the response
only (the run masks the prompt). Scored on responses by ROUGE-L (primary), corpus BLEU, CodeXGLUE
BLEU and exact match (after whitespace normalisation: what the ``name`` instructions need).

``path``: ``stdlib`` (the instruction set built from this Python's standard library:
``peftlab.data.instruct``, cached like code→doc's), a dolly or Alpaca ``.jsonl`` / ``.json`` file
(split by each record's content hash into ``split_percent``: deterministic, identical records
together), or a directory with ``train`` / ``valid`` (``validation``, ``dev``) / ``test`` files read
as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

from peftlab.errors import DataError
from peftlab.tasks.base import Example, TaskConfig, sample_rows

# Alpaca's two templates (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT), verbatim.
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
_SPLIT_FILES = {"train": ("train",), "valid": ("valid", "validation", "dev"), "test": ("test",)}


def _tail(template: str) -> str:
    import string

    parts = list(string.Formatter().parse(template))
    return parts[-1][0] if parts and parts[-1][1] is None else ""


@dataclass(frozen=True)
class InstructionTask(TaskConfig):
    name = "instruction"
    kind = "generation"
    primary_metric = "rouge_l"
    metric_names = ("rouge_l", "bleu", "codexglue_bleu", "exact_match")

    path: str = "stdlib"  # "stdlib", a dolly/Alpaca .jsonl or .json file, or a directory of split files
    format: Literal["auto", "dolly", "alpaca"] = "auto"  # auto: dolly if a record has "response", else Alpaca
    template: str = ALPACA_INPUT  # prompt for a record with an input; fields {instruction}, {input}
    template_no_input: str = ALPACA_NO_INPUT  # prompt for a record without one; field {instruction}
    split_percent: tuple[int, int, int] = (90, 5, 5)  # a single file: train/valid/test percent
    categories: Optional[tuple[str, ...]] = None  # keep only these categories (None = all)
    title: Optional[str] = None  # name in tables (default "instruction")

    def __post_init__(self):
        import string

        from peftlab.config import FieldError

        for name, allowed in (("template", {"instruction", "input"}), ("template_no_input", {"instruction"})):
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(getattr(self, name)) if f is not None}
            except ValueError as e:
                raise FieldError(name, f"{name} is malformed ({e}); write literal braces as '{{{{' and '}}}}'") from None
            if used - allowed or "instruction" not in used:
                raise FieldError(name, f"{name} must use {{instruction}} and only {sorted(allowed)}, uses {sorted(used)}")
        if len(self.split_percent) != 3 or sum(self.split_percent) != 100 or min(self.split_percent) < 0:
            raise FieldError("split_percent", f"split_percent must be 3 numbers >= 0 (train, valid, test) summing "
                                              f"to 100, got {list(self.split_percent)}")
        if isinstance(self.categories, str):
            raise FieldError("categories", f"categories must be a list, got the string {self.categories!r}")

    def describe(self) -> str:
        return self.title or self.name

    def data_path(self) -> Path:
        from peftlab.data.instruct import default_instruct_dir

        path = default_instruct_dir() if self.path == "stdlib" else Path(self.path)
        if not path.exists():
            raise DataError(f"data.task.path: {path} does not exist")
        return path

    def _file(self, split: str) -> Path | None:
        """The split's file in a directory; None for a single file (split by hash)."""
        root = self.data_path()
        if root.is_file():
            return None
        for stem in _SPLIT_FILES.get(split, (split,)):
            for end in (".jsonl", ".json"):
                if (root / f"{stem}{end}").is_file():
                    return root / f"{stem}{end}"
        raise DataError(f"{root}: no {split} split (looked for "
                        f"{', '.join(s + '.{jsonl,json}' for s in _SPLIT_FILES.get(split, (split,)))})")

    def records(self, split: str):
        from peftlab.data.instruct import read_instruction_file
        from peftlab.data.splits import SPLITS, split_of_digest

        file = self._file(split)
        if file is not None:
            rows = read_instruction_file(file, self.format)
        else:
            percent = dict(zip(SPLITS, self.split_percent))
            rows = [r for r in read_instruction_file(self.data_path(), self.format)
                    if split_of_digest(_digest(r), percent) == split]
        if self.categories is not None:
            rows = [r for r in rows if r.category in self.categories]
        if not rows:
            raise DataError(f"data.task {self.describe()}: split {split!r} is empty"
                            + (f" (categories {list(self.categories)})" if self.categories is not None else ""))
        return rows

    def render(self, instruction: str, input: str = "") -> str:
        if input.strip():
            return self.template.format(instruction=instruction, input=input)
        return self.template_no_input.format(instruction=instruction)

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        return sample_rows([Example(self.render(r.instruction, r.input), r.response,
                                    {"category": r.category, "line": r.line}) for r in self.records(split)], limit)

    @property
    def prompt_tail(self) -> str:
        """The end both templates share (kept when a long prompt loses its middle)."""
        a, b = _tail(self.template), _tail(self.template_no_input)
        return os.path.commonprefix([a[::-1], b[::-1]])[::-1]

    def fingerprint_paths(self) -> list[str]:
        d = self.data_path()
        return [str(p) for p in sorted(d.glob("*.json*"))] if d.is_dir() else [str(d)]


    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        from peftlab.evaluate.metrics import text_metrics

        refs = [e.target for e in examples]
        out = text_metrics(list(predictions), refs)
        same = sum(" ".join(p.split()) == " ".join(r.split()) for p, r in zip(predictions, refs))
        out["exact_match"] = 100.0 * same / max(len(refs), 1)
        return out


def _digest(record) -> str:
    """A record's content hash: its split in a single file (identical records land together)."""
    key = json.dumps([record.instruction, record.input, record.response], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
