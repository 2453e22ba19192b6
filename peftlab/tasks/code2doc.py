"""Code → documentation (CodeXGLUE code-to-text, Lu et al. 2021; seed 000's task).

Input: a Python function without its docstring and comments, put into a prompt template; target:
the first paragraph of its docstring. Scored by corpus BLEU (sacrebleu), the CodeXGLUE smoothed
sentence BLEU-4 and ROUGE-L (``peftlab.evaluate.metrics``). ``path: stdlib`` builds the corpus from
this interpreter's standard library (``peftlab.data.code2doc``); a directory with
``{train,valid,test}.jsonl`` in CodeXGLUE's format is read as distributed. ``test_source: PACKAGE``
(with ``path: stdlib``) swaps the test split for every documented function of another installed
package or a directory: a cross-project test that pretraining never read (see ``peftlab.tasks.source``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from peftlab.data.code2doc import BUILDER_VERSION
from peftlab.data.prompts import SEED000_TEMPLATE
from peftlab.errors import DataError
from peftlab.tasks.base import Example, TaskConfig


@dataclass(frozen=True)
class Code2DocTask(TaskConfig):
    name = "code2doc"
    kind = "generation"
    primary_metric = "codexglue_bleu"
    builder_version = BUILDER_VERSION  # keys a cached cross-project build (its records are extract_functions')
    metric_names = ("bleu", "codexglue_bleu", "rouge_l", "distinct_predictions")

    path: str = "stdlib"  # "stdlib" (built from this Python's standard library) or a CodeXGLUE dir/file
    target_field: Literal["docstring_tokens", "docstring"] = "docstring_tokens"
    template: str = SEED000_TEMPLATE  # prompt; fields: {func_name}, {code}, {path}
    test_source: str = "stdlib"  # test split: "stdlib" (held-out stdlib files) or a package/directory (cross-project)

    def __post_init__(self):
        from peftlab.config import FieldError
        from peftlab.data.prompts import template_fields
        from peftlab.errors import ConfigError

        try:
            template_fields(self.template)
        except ConfigError as e:
            raise FieldError("template", str(e)) from None
        if self.test_source != "stdlib" and self.path != "stdlib":
            raise FieldError("test_source", "a cross-project test split goes with path: stdlib (the train split it "
                                            "is deduplicated against)")

    # --- as an extractor of peftlab.data.pysource (cross-project test splits) ---------------------
    @classmethod
    def extract(cls, file) -> list[dict]:
        from peftlab.data.code2doc import extract_functions
        from peftlab.data.pysource import ALL_TEST

        return extract_functions(file.text, file.path, digest=file.digest, percent=ALL_TEST)

    @classmethod
    def record_key(cls, record: dict) -> str:
        return " ".join(record["code_tokens"]) + "\x00" + " ".join(record["docstring_tokens"])

    def describe(self) -> str:
        return self.name if self.test_source == "stdlib" else f"{self.name}@{Path(self.test_source).name}"

    def split_path(self, split: str) -> Path:
        """The directory (or, for a cross-project test, the file) that holds ``split``."""
        if split != "test" or self.test_source == "stdlib":
            return self.data_dir()
        import json

        from peftlab.data.pysource import cross_project_dir, read_split

        stdlib = self.data_dir()

        def exclude():  # every key of the stdlib corpus's train and valid splits
            return {self.name: {self.record_key(r) for s in ("train", "valid") for r in read_split(stdlib / f"{s}.jsonl")}}

        return cross_project_dir(self.test_source, [type(self)], exclude, stdlib / "cross") / self.name / "test.jsonl"

    def data_dir(self) -> Path:
        from peftlab.data.code2doc import default_code2doc_dir

        path = default_code2doc_dir() if self.path == "stdlib" else Path(self.path)
        if not path.exists():
            raise DataError(f"data.task.path: {path} does not exist")
        return path

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        from peftlab.data.code2doc import load_code2doc_split
        from peftlab.data.prompts import render_prompt

        rows = load_code2doc_split(self.split_path(split), split, target_field=self.target_field, sample=limit)
        return [Example(render_prompt(self.template, e), e.target,
                        {"func_name": e.func_name, "path": e.path, "line": e.line}, shown=e.code) for e in rows]

    def example_from_code(self, code: str, func_name: str) -> Example:
        """One function typed by a user (``peftlab generate --code``), rendered like the data."""
        from peftlab.data.code2doc import Code2DocExample
        from peftlab.data.pycode import clean_code
        from peftlab.data.prompts import render_prompt

        e = Code2DocExample(func_name=func_name, code=clean_code(code), target="")
        return Example(render_prompt(self.template, e), "", {"func_name": func_name})

    @property
    def prompt_tail(self) -> str:
        import string

        parts = list(string.Formatter().parse(self.template))
        # the literal text after the last {field}
        return parts[-1][0] if parts and parts[-1][1] is None else ""

    def split_files(self, split: str) -> list[str]:
        from peftlab.data.code2doc import split_file

        return [str(split_file(self.split_path(split), split))]


    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        from peftlab.evaluate.metrics import text_metrics

        out = text_metrics(list(predictions), [e.target for e in examples])
        # a constant output can score well on smoothed sentence BLEU; this exposes it
        out["distinct_predictions"] = len(set(predictions)) / max(len(predictions), 1)
        return out
