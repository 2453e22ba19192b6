"""Method-name prediction (Allamanis et al. 2016, "A Convolutional Attention Network for Extreme
Summarization of Source Code"; code2seq, Alon et al. 2019): the function with its name masked ->
the name.

Input: a function's code, docstring and comments removed (a docstring often says the name), with
every whole-word occurrence of its name (the ``def``, recursive calls, ``self.name`` uses, names in
strings) replaced by ``mask``. The default mask is T5's first sentinel, ``<extra_id_0>``: a T5
pretrained by span corruption (as mini-t5 was) already reads it as "a span to fill in". Target: the
name. Dunder methods are left out (``__init__`` would be a free answer), and so are bodies under two
lines.

Scores (code2seq's, on 0-100): ``exact_match``, the name's sub-tokens equal the prediction's; and
precision / recall / ``f1`` over sub-tokens summed over the whole test set (a name splits at
underscores, camelCase humps and digits, lower-cased: ``getHTTPResponse_2`` -> get http response 2;
each prediction's sub-token multiset is matched against the reference's).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from peftlab.tasks.base import Example
from peftlab.tasks.source import SourceTask, check_template, template_tail

_PIECE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def subtokens(name: str) -> list[str]:
    """``name`` split at underscores / non-alphanumerics, camelCase humps and digits, lower-cased."""
    return [p.lower() for part in re.split(r"[^A-Za-z0-9]+", name) for p in _PIECE.findall(part)]


def name_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``exact_match``, ``precision``, ``recall``, ``f1`` over sub-tokens (code2seq), each 0-100."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"need as many predictions as references (> 0), got {len(predictions)} and {len(references)}")
    tp = fp = fn = exact = 0
    for p, r in zip(predictions, references):
        pred, ref = Counter(subtokens(p)), Counter(subtokens(r))
        hit = sum((pred & ref).values())
        tp, fp, fn = tp + hit, fp + sum(pred.values()) - hit, fn + sum(ref.values()) - hit
        exact += subtokens(p) == subtokens(r)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"exact_match": 100.0 * exact / len(references), "precision": 100.0 * precision,
            "recall": 100.0 * recall, "f1": 100.0 * f1}


def mask_name(code: str, name: str, mask: str) -> str:
    """Every whole-word occurrence of ``name`` in ``code`` replaced by ``mask``."""
    return re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", lambda _: mask, code)


@dataclass(frozen=True)
class MethodNameTask(SourceTask):
    name = "method_name"
    kind = "generation"
    primary_metric = "f1"
    metric_names = ("exact_match", "precision", "recall", "f1")
    builder_version = 1

    mask: str = "<extra_id_0>"  # replaces the name everywhere in the code
    template: str = "{code}\nThe name of the function {mask} is:"  # fields: {code}, {mask}

    def __post_init__(self):
        from peftlab.config import FieldError

        super().__post_init__()
        if not self.mask.strip():
            raise FieldError("mask", "must be a visible token")
        check_template(self.template, ("code", "mask"))

    @classmethod
    def extract(cls, file) -> list[dict]:
        out = []
        for f in file.functions:
            if len(f.name) < 2 or (f.name.startswith("__") and f.name.endswith("__")):
                continue
            code = f.cleaned
            if sum(1 for line in code.split("\n") if line.strip()) < 3:  # def + at least two body lines
                continue
            out.append({"func_name": f.qualname, "line": f.node.lineno, "code": code, "name": f.name})
        return out

    @classmethod
    def record_key(cls, record: dict) -> str:
        return hashlib.sha1(mask_name(record["code"], record["name"], "\x00").encode()).hexdigest() + record["name"]

    def example(self, record: dict) -> Example:
        code = mask_name(record["code"], record["name"], self.mask)
        return Example(self.template.format(code=code, mask=self.mask), record["name"],
                       {"func_name": record["func_name"], "path": record["path"], "line": record["line"]})

    @property
    def prompt_tail(self) -> str:
        return template_tail(self.template).replace("{mask}", self.mask)

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        return name_metrics(list(predictions), [e.target for e in examples])

    def row_stats(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        """Exact match per row; precision, recall and F1 from each row's sub-token counts (micro)."""
        from peftlab.evaluate.rows import mean_rows, micro_rows

        tp, fp, fn, exact = [], [], [], []
        for p, e in zip(predictions, examples):
            pred, ref = Counter(subtokens(p)), Counter(subtokens(e.target))
            hit = sum((pred & ref).values())
            tp.append(hit)
            fp.append(sum(pred.values()) - hit)
            fn.append(sum(ref.values()) - hit)
            exact.append(100.0 * (subtokens(p) == subtokens(e.target)))
        return {"exact_match": mean_rows(exact), **micro_rows(tp, fp, fn)}

