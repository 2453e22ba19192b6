"""Line completion: a function cut at a statement boundary -> its next line (the line-level code
completion of CodeXGLUE, Lu et al. 2021, on functions).

Each function (docstring and comments removed, at least three lines) gives one example: a line
holding a whole one-line statement (``pass`` and lines under four characters excepted) is drawn with
a seed fixed by the function's code (a copy of it elsewhere is cut alike, and deduplicated); the
input is every line before it plus the line's indentation, the target the line itself. A prompt keeps the ``def`` line and as many of the last
lines before the cut as fit in ``max_context_chars`` (the end is what predicts the next line, and a
prompt too long for the model would lose its middle, i.e. that end). An encoder-decoder sees the code
followed by T5's first sentinel (the span to fill in, as in its pretraining); a decoder simply
continues the code. Scores (CodeXGLUE's, 0-100, as its line-completion evaluator computes them:
``peftlab.evaluate.metrics``): ``exact_match`` (the same tokens) and ``edit_sim`` (fuzzywuzzy's
``fuzz.ratio``) of each prediction's first line, since CodeXGLUE's pipeline stops generating at the
end of the line.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Sequence

from peftlab.tasks.base import Example
from peftlab.tasks.source import SourceTask, check_template, rng_for, template_tail


def cut_context(context: str, budget: int) -> str:
    """The first line of ``context`` and its longest suffix of whole lines within ``budget`` characters
    (at least the last line)."""
    lines = context.split("\n")
    if len(context) <= budget or len(lines) <= 2:
        return context
    keep, used = [], len(lines[0]) + 1
    for line in reversed(lines[1:]):
        if keep and used + len(line) + 1 > budget:
            break
        keep.append(line)
        used += len(line) + 1
    return "\n".join([lines[0], *reversed(keep)])


@dataclass(frozen=True)
class LineCompletionTask(SourceTask):
    name = "line_completion"
    kind = "generation"
    primary_metric = "edit_sim"
    metric_names = ("exact_match", "edit_sim")
    builder_version = 1

    max_context_chars: int = 384  # code shown before the cut (about 100-130 tokens of mini-t5's tokenizer)
    template: str = "{code}<extra_id_0>"  # encoder-decoder prompt; field: {code} (ends with the next line's indentation)
    decoder_template: str = "{code}"  # decoder prompt: the code, continued

    def __post_init__(self):
        from peftlab.config import FieldError

        super().__post_init__()
        if self.max_context_chars < 16:
            raise FieldError("max_context_chars", f"must be >= 16, got {self.max_context_chars}")
        check_template(self.template, ("code",))
        if self.template.count("{code}") != 1 or "{{" in self.template or "}}" in self.template:
            raise FieldError("template", "use {code} exactly once (and no literal braces)")
        try:
            check_template(self.decoder_template, ("code",))
        except FieldError as e:
            raise FieldError("decoder_template", str(e)) from None

    @classmethod
    def extract(cls, file) -> list[dict]:
        out = []
        for f in file.functions:
            lines = f.cleaned.split("\n")
            if sum(1 for ln in lines if ln.strip()) < 3:
                continue
            try:
                (func,) = ast.parse(f.cleaned).body
            except (SyntaxError, ValueError, RecursionError):
                continue
            candidates = sorted({n.lineno for n in ast.walk(func) if isinstance(n, ast.stmt) and n is not func
                                 and n.lineno == n.end_lineno > 1 and not isinstance(n, ast.Pass)
                                 and len(lines[n.lineno - 1].strip()) >= 4})
            if not candidates:
                continue
            at = rng_for(f.cleaned).choice(candidates)  # by the code: a copy elsewhere is cut alike (deduplicated)
            line = lines[at - 1]
            out.append({"func_name": f.qualname, "line": f.node.lineno, "context": "\n".join(lines[: at - 1]),
                        "indent": line[: len(line) - len(line.lstrip())], "target": line.strip()})
        return out

    @classmethod
    def record_key(cls, record: dict) -> str:
        return hashlib.sha1(f"{record['context']}\x00{record['target']}".encode()).hexdigest()

    def _code(self, record: dict) -> str:
        return cut_context(record["context"], self.max_context_chars) + "\n" + record["indent"]

    def example(self, record: dict) -> Example:
        meta = {"func_name": record["func_name"], "path": record["path"], "line": record["line"]}
        return Example(self.template.format(code=self._code(record)), record["target"], meta)

    def render_for_decoder(self, example: Example) -> Example:
        head, tail = self.template.split("{code}")  # exactly one {code}: checked in __post_init__
        code = example.source[len(head): len(example.source) - len(tail)]
        return dataclasses.replace(example, source=self.decoder_template.format(code=code))

    @property
    def prompt_tail(self) -> str:
        return template_tail(self.template)

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        from peftlab.evaluate.metrics import edit_similarity, exact_match

        refs = [e.target for e in examples]
        lines = [p.split("\n", 1)[0] for p in predictions]  # the completed line (CodeXGLUE stops at <EOL>)
        return {"exact_match": exact_match(lines, refs), "edit_sim": edit_similarity(lines, refs)}
