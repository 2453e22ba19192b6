"""The base of the offline tasks mined from Python sources (method names, docstring matching,
exception types, line completion): where their splits come from, and how they are read.

``path: stdlib`` (the default) reads every source task built once from this interpreter's standard
library (``peftlab.data.pysource.stdlib_tasks_dir``: split by file content hash exactly as
pretraining excludes its evaluation files, deduplicated, cached); a directory made by
``peftlab data <task> SRC... --out DIR`` is read the same way. ``test_source`` swaps the test split
for a *cross-project* one: every function of another installed package (``accelerate``, a
dependency of peftlab, so always there, and held out of pretraining) or directory, minus anything
already in train or valid.

A task class is also its own extractor (``peftlab.data.pysource.Extractor``): ``extract(file)``
turns one parsed file into records, ``record_key(record)`` says when two records are duplicates,
``builder_version`` keys the cache. ``example(record)`` renders a record for the model.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

from peftlab.errors import DataError
from peftlab.tasks.base import Example, TaskConfig, sample_rows

_SPLIT_ALIASES = {"validation": "valid", "dev": "valid", "val": "valid"}


def source_task_classes() -> list[type["SourceTask"]]:
    """Every registered task mined from Python sources (they are built together, in one pass)."""
    from peftlab.tasks.registry import get_task, task_names

    return [c for c in map(get_task, task_names()) if isinstance(c, type) and issubclass(c, SourceTask)]


def rng_for(*parts: str) -> random.Random:
    """A random generator seeded by text (Python's own ``hash`` of a str differs between runs)."""
    return random.Random(int(hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16], 16))


@lru_cache(maxsize=64)
def _read(path: str, mtime_ns: int) -> tuple[dict, ...]:
    from peftlab.data.pysource import read_split

    return tuple(read_split(Path(path)))


def read_records(path: Path) -> tuple[dict, ...]:
    """A built split's records (cached per file and modification time: tasks read train repeatedly)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (build it with `peftlab data <task> SRC... --out DIR`)")
    return _read(str(path), path.stat().st_mtime_ns)


@dataclass(frozen=True)
class SourceTask(TaskConfig):
    builder_version: ClassVar[int] = 1  # bump when ``extract`` would write different records

    path: str = "stdlib"  # "stdlib" (built once from this Python's standard library) or a `peftlab data` directory
    test_source: str = "stdlib"  # test split: "stdlib" (held-out stdlib files) or a package/directory (cross-project)

    def __post_init__(self):
        from peftlab.config import FieldError

        if self.test_source != "stdlib" and self.path != "stdlib":
            raise FieldError("test_source", "a cross-project test split goes with path: stdlib (the train split it "
                                            "is deduplicated against)")

    # --- building (class-level: the builder calls these without a config) ----------------------
    @classmethod
    def extract(cls, file) -> list[dict]:
        raise NotImplementedError

    @classmethod
    def record_key(cls, record: dict) -> str:
        raise NotImplementedError

    # --- reading --------------------------------------------------------------------------------
    def example(self, record: dict) -> Example:
        raise NotImplementedError

    def keep(self, record: dict) -> bool:
        """Whether a built record is an example under this config (e.g. among the frequent labels)."""
        return True

    def describe(self) -> str:
        return self.name if self.test_source == "stdlib" else f"{self.name}@{Path(self.test_source).name}"

    def data_dir(self) -> Path:
        if self.path == "stdlib":
            from peftlab.data.pysource import stdlib_tasks_dir

            return stdlib_tasks_dir(source_task_classes()) / self.name
        path = Path(self.path)
        if not path.is_dir():
            raise DataError(f"data.task.path: {path} is not a directory (build one with `peftlab data {self.name}`)")
        return path

    def split_file(self, split: str) -> Path:
        split = _SPLIT_ALIASES.get(split, split)
        if split not in ("train", "valid", "test"):
            raise DataError(f"unknown split {split!r}; expected train, valid or test")
        if split == "test" and self.test_source != "stdlib":
            from peftlab.data.pysource import cross_project_dir

            classes = source_task_classes()
            stdlib = self.data_dir().parent

            def exclude():  # every key of the stdlib build's train and valid splits
                return {c.name: {c.record_key(r) for s in ("train", "valid") for r in read_records(stdlib / c.name / f"{s}.jsonl")}
                        for c in classes}

            return cross_project_dir(self.test_source, classes, exclude, stdlib / "cross") / self.name / "test.jsonl"
        return self.data_dir() / f"{split}.jsonl"

    def records(self, split: str) -> list[dict]:
        return [r for r in read_records(self.split_file(split)) if self.keep(r)]

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        rows = self.records(split)
        if not rows:
            raise DataError(f"{self.split_file(split)}: no {self.name} examples in split {split!r}")
        return [self.example(r) for r in sample_rows(rows, limit)]

    def split_files(self, split: str) -> list[str]:
        return [str(self.split_file(split))]



def check_template(template: str, allowed: Sequence[str]) -> None:
    """FieldError("template") unless ``template`` is a format string over ``allowed`` fields only."""
    import string

    from peftlab.config import FieldError

    try:
        names = {n for _, n, _, _ in string.Formatter().parse(template) if n is not None}
    except ValueError as e:
        raise FieldError("template", f"malformed ({e}); write literal braces as '{{{{' and '}}}}'") from None
    unknown = names - set(allowed)
    if unknown:
        raise FieldError("template", f"uses {sorted(unknown)}; allowed fields: {', '.join(allowed)}")


def template_tail(template: str, after: str = "code") -> str:
    """The template after its last ``{after}`` field, other fields left as ``{name}``: the fixed end
    of a prompt, which survives when a long input loses its middle."""
    import string

    parts = list(string.Formatter().parse(template))
    idx = max((i for i, (_, n, _, _) in enumerate(parts) if n == after), default=None)
    if idx is None:
        return ""
    return "".join(lit + ("{" + n + "}" if n is not None else "") for lit, n, _, _ in parts[idx + 1:])


def normalise_label(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


@dataclass(frozen=True)
class SourceClassification(SourceTask):
    """A source task whose target is one of a few label words (ranked by likelihood by default)."""

    kind = "classification"
    primary_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1", "f1")

    eval: Literal["rank", "generate"] = "rank"  # rank the label words by likelihood, or decode + normalise

    def predict_label(self, text: str) -> int:
        """The label a decoded text names (-1 when none): exact match after normalising."""
        norm, words = normalise_label(text), self.choices()
        return next((i for i, w in enumerate(words) if normalise_label(w) == norm), -1)

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, Any]:
        from peftlab.evaluate.metrics import classification_metrics

        return classification_metrics([self.predict_label(p) for p in predictions], [e.label for e in examples],
                                      len(self.choices()))

    def row_stats(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        from peftlab.evaluate.rows import classification_rows

        return classification_rows([self.predict_label(p) for p in predictions], [e.label for e in examples],
                                   len(self.choices()))
