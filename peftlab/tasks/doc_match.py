"""Docstring <-> code matching: does this docstring describe this function? (binary classification;
the pairing task of CodeSearchNet, Husain et al. 2019, with hard negatives).

Every documented function (a summary of at least three words, at least two lines of code once its
docstring and comments are removed) that has another documented function in the same module gives
two examples: its code with its own summary (``yes``) and its code with the summary of another
function of the same module, drawn with a seed fixed by the file and the function (``no``). A
negative from the same module shares its vocabulary, so word overlap alone does not decide; the
classes are balanced by construction. Scores: accuracy, F1 of ``yes`` (a match), macro-F1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from peftlab.tasks.base import Example
from peftlab.tasks.source import SourceClassification, check_template, rng_for, template_tail


@dataclass(frozen=True)
class DocMatchTask(SourceClassification):
    name = "doc_match"
    builder_version = 1

    template: str = "Docstring: {doc}\nCode:\n{code}\nDoes the docstring describe the code?"  # fields: {doc}, {code}
    label_words: tuple[str, str] = ("no", "yes")  # what the model says for: not a match, a match

    def __post_init__(self):
        from peftlab.config import FieldError

        super().__post_init__()
        check_template(self.template, ("doc", "code"))
        if len(self.label_words) != 2 or len({w.strip().lower() for w in self.label_words}) != 2:
            raise FieldError("label_words", "give two different words: [no-match word, match word]")

    @classmethod
    def extract(cls, file) -> list[dict]:
        documented = [f for f in file.functions
                      if len(f.summary.split()) >= 3 and sum(1 for ln in f.cleaned.split("\n") if ln.strip()) >= 2]
        out = []
        for f in documented:
            others = [g for g in documented if g.summary != f.summary]
            if not others:
                continue
            other = rng_for(file.digest, f.qualname).choice(others)
            base = {"func_name": f.qualname, "line": f.node.lineno, "code": f.cleaned}
            out.append({**base, "doc": f.summary, "label": 1})
            out.append({**base, "doc": other.summary, "doc_of": other.qualname, "label": 0})
        return out

    @classmethod
    def record_key(cls, record: dict) -> str:
        # the code and the label, not the docstring: a function seen in training is not tested again
        # with another module-mate's docstring
        return hashlib.sha1(record["code"].encode()).hexdigest() + str(record["label"])

    def choices(self) -> list[str]:
        return list(self.label_words)

    def example(self, record: dict) -> Example:
        label = record["label"]
        meta = {"func_name": record["func_name"], "path": record["path"], "line": record["line"]}
        return Example(self.template.format(doc=record["doc"], code=record["code"]), self.label_words[label], meta, label)

    @property
    def prompt_tail(self) -> str:
        return template_tail(self.template)
