"""Exception type: which exception does this function raise? (multi-class classification over the
exception classes most frequent in the training split).

A function qualifies when every ``raise X(...)`` / ``raise X`` / ``raise mod.X(...)`` in it names
the same class ``X`` (a bare re-raise does not count). The input is its code, docstring and comments
removed (a docstring often says "Raises ValueError"), with each such statement, message and
``from`` clause included, replaced by ``raise_mask`` (``raise ...``: the code stays valid Python and
shows *where* something is raised, and the condition guarding it, but not what). The function must
keep at least three lines. The label set is ``classes``, or else the ``num_classes`` classes with the
most training examples; functions raising anything else are left out of every split.
Scores: macro-F1 (what ranks methods: the classes are far from balanced, and the majority class
alone is about 60% accurate) and accuracy.
"""

from __future__ import annotations

import ast
import hashlib
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

from peftlab.tasks.base import Example
from peftlab.tasks.source import SourceClassification, check_template, template_tail

MASK = "raise ..."


def _class_name(exc: ast.AST) -> Optional[str]:
    node = exc.func if isinstance(exc, ast.Call) else exc
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def mask_raises(code: str, mask: str) -> tuple[str, Optional[str]]:
    """``(code with every raise-with-an-exception statement replaced by mask, the class raised)``;
    the class is None when the statements name different (or no, or unnamed) classes."""
    from peftlab.data.pycode import char_col

    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return code, None
    raises = [n for n in ast.walk(tree) if isinstance(n, ast.Raise) and n.exc is not None]
    names = {_class_name(n.exc) for n in raises}
    if len(names) != 1 or None in names:
        return code, None
    lines = code.split("\n")
    for n in sorted(raises, key=lambda n: (n.lineno, n.col_offset), reverse=True):
        c0 = char_col(lines[n.lineno - 1], n.col_offset)
        c1 = char_col(lines[n.end_lineno - 1], n.end_col_offset)
        lines[n.lineno - 1: n.end_lineno] = [lines[n.lineno - 1][:c0] + mask + lines[n.end_lineno - 1][c1:]]
    return "\n".join(lines), names.pop()


@dataclass(frozen=True)
class ExceptionTypeTask(SourceClassification):
    name = "exception_type"
    primary_metric = "macro_f1"  # the classes are imbalanced: always "ValueError" is ~60% accurate, 9% macro-F1
    metric_names = ("accuracy", "macro_f1")
    builder_version = 1

    classes: Optional[tuple[str, ...]] = None  # the label set; None = the num_classes most frequent in train
    num_classes: int = 8
    raise_mask: str = MASK  # what each raise statement becomes
    template: str = "{code}\nWhich exception does this function raise?"  # field: {code}

    def __post_init__(self):
        from peftlab.config import FieldError

        super().__post_init__()
        check_template(self.template, ("code",))
        if self.num_classes < 2:
            raise FieldError("num_classes", f"must be >= 2, got {self.num_classes}")
        if self.classes is not None and len(set(self.classes)) < 2:
            raise FieldError("classes", "name at least two different exception classes")

    @classmethod
    def extract(cls, file) -> list[dict]:
        out = []
        for f in file.functions:
            if "raise" not in f.code:
                continue
            code, exc = mask_raises(f.cleaned, MASK)  # stored with the default mask; raise_mask swaps it on reading
            if exc and sum(1 for ln in code.split("\n") if ln.strip()) >= 3:
                out.append({"func_name": f.qualname, "line": f.node.lineno, "code": code, "exception": exc})
        return out

    @classmethod
    def record_key(cls, record: dict) -> str:
        return hashlib.sha1(record["code"].encode()).hexdigest() + record["exception"]

    @cached_property
    def _classes(self) -> tuple[str, ...]:
        if self.classes is not None:
            return tuple(self.classes)
        from peftlab.tasks.source import read_records

        counts = Counter(r["exception"] for r in read_records(self.split_file("train")))
        return tuple(c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.num_classes])

    def choices(self) -> list[str]:
        return list(self._classes)

    def keep(self, record: dict) -> bool:
        return record["exception"] in self._classes

    def example(self, record: dict) -> Example:
        code = record["code"] if self.raise_mask == MASK else record["code"].replace(MASK, self.raise_mask)
        meta = {"func_name": record["func_name"], "path": record["path"], "line": record["line"]}
        return Example(self.template.format(code=code), record["exception"], meta, self._classes.index(record["exception"]))

    @property
    def prompt_tail(self) -> str:
        return template_tail(self.template)
