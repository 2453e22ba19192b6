"""Any dataset of the HF ``datasets`` ecosystem — a Hub id, or local Parquet / Arrow / JSON(L) / CSV /
TSV files — as classification, sequence-to-sequence, instruction or chat data, its columns mapped.

``{name: dataset, path: stanfordnlp/imdb, format: classify}``;
``{name: dataset, path: data/xsum.parquet, format: seq2seq, columns: {source: document, target: summary}}``;
``{name: dataset, path: tatsu-lab/alpaca, format: instruction}``;
``{name: dataset, path: HuggingFaceH4/no_robots, format: chat}``.

``columns`` maps each of the format's fields to the dataset's column; a field left out is looked for
under its usual names (``FIELDS``). Formats:

* ``classify``: ``label`` and the text fields (every other key of ``columns``; default one, ``text``),
  put into ``template``; a ``ClassLabel`` column's names are the label values. Label words ranked by
  likelihood (``eval: rank``) or decoded. Accuracy, macro-F1, F1.
* ``seq2seq``: ``source`` into ``template`` -> ``target``. BLEU, chrF, ROUGE-1/2/L (``primary`` ranks).
* ``instruction``: ``instruction``, optional ``input`` and ``category``, ``response``; Alpaca's prompt
  templates (``peftlab.tasks.instruction``). ROUGE-L, BLEU, CodeXGLUE BLEU, exact match.
* ``chat``: ``messages`` (``{role, content}`` turns; ShareGPT's ``{from, value}`` read too), the
  last reply the target. For a decoder the conversation is rendered with the tokenizer's chat template
  (or ``chat_template``) and trained on every assistant turn only (``peftlab.data.chat``); without a
  template (``chat: auto``), or with ``chat: plain``, as ``role: content`` lines. Scored as instructions.

Splits: ``peftlab.data.hf_datasets`` (named splits, else carved from train by content hash).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from peftlab.errors import DataError
from peftlab.tasks.base import Example, TaskConfig, sample_rows

# each format's fields and the column names they are looked for under when ``columns`` names none
FIELDS = {
    "classify": {"text": ("text", "sentence", "content"), "label": ("label", "labels")},
    "seq2seq": {"source": ("source", "document", "input", "src"), "target": ("target", "summary", "output", "tgt")},
    "instruction": {"instruction": ("instruction", "prompt"), "input": ("input", "context"),
                    "response": ("output", "response", "completion"), "category": ("category",)},
    "chat": {"messages": ("messages", "conversations", "conversation")},
}
OPTIONAL = {"input", "category"}
METRICS = {"classify": ("accuracy", "macro_f1", "f1"), "seq2seq": ("bleu", "chrf", "rouge_1", "rouge_2", "rouge_l"),
           "instruction": ("rouge_l", "bleu", "codexglue_bleu", "exact_match")}
_SHAREGPT = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


def normalised(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


@dataclass(frozen=True)
class DatasetTask(TaskConfig):
    name = "dataset"

    path: str = ""  # a Hub dataset id (org/name), a local .parquet/.arrow/.json/.jsonl/.csv/.tsv file, or a directory
    format: Literal["classify", "seq2seq", "instruction", "chat"] = "seq2seq"
    columns: dict[str, str] = field(default_factory=dict)  # the format's field -> the dataset's column
    subset: Optional[str] = None  # the Hub dataset's configuration (e.g. glue's "rte")
    revision: Optional[str] = None  # a Hub commit, branch or tag
    splits: dict[str, str] = field(default_factory=dict)  # train/valid/test -> the dataset's split name
    split_percent: tuple[int, int, int] = (90, 5, 5)  # train/valid/test share of splits carved from train
    template: Optional[str] = None  # prompt: classify over its text fields, seq2seq {source}, instruction Alpaca's
    template_no_input: Optional[str] = None  # instruction: the prompt of a record without input
    labels: Optional[tuple[str, ...]] = None  # classify: label values in index order; None = ClassLabel names / sorted
    label_words: Optional[tuple[str, ...]] = None  # classify: what the model says for each label; None = the values
    eval: Literal["rank", "generate"] = "rank"  # classify: rank the label words by likelihood, or decode
    primary: Optional[str] = None  # the metric that ranks methods (default: accuracy, rouge_l)
    chat: Literal["auto", "template", "plain"] = "auto"  # chat on decoders: the chat template where there is one
    chat_template: Optional[str] = None  # chat: a Jinja chat template used instead of the tokenizer's
    title: Optional[str] = None  # name in tables (default: the dataset's name)

    def __post_init__(self):
        from peftlab.config import FieldError

        if not self.path:
            raise FieldError("path", "dataset needs a path: a Hub dataset id or a local data file or directory")
        known = set(FIELDS[self.format])
        unknown = [k for k in self.columns if k not in known and self.format != "classify"]
        if unknown:
            raise FieldError("columns", f"{self.format} has no field {unknown[0]!r}; its fields: {', '.join(known)}")
        bad = [s for s in self.splits if s not in ("train", "valid", "test")]
        if bad:
            raise FieldError("splits", f"peftlab's splits are train, valid and test, not {bad[0]!r}")
        if len(self.split_percent) != 3 or sum(self.split_percent) != 100 or min(self.split_percent) < 0:
            raise FieldError("split_percent", f"3 numbers >= 0 (train, valid, test) summing to 100, got "
                                              f"{list(self.split_percent)}")
        if self.primary is not None and self.primary not in self.metric_names:
            raise FieldError("primary", f"{self.format} reports {', '.join(self.metric_names)}; not {self.primary!r}")
        if self.label_words is not None and self.labels is not None and len(self.label_words) != len(self.labels):
            raise FieldError("label_words", f"{len(self.label_words)} words for {len(self.labels)} labels")
        self._check_templates()

    def _check_templates(self) -> None:
        from peftlab.config import FieldError

        allowed = {"classify": set(self.text_fields()), "seq2seq": {"source"},
                   "instruction": {"instruction", "input"}}.get(self.format, set())
        for name in ("template", "template_no_input"):
            text = getattr(self, name)
            if text is None:
                continue
            if self.format == "chat" or (name == "template_no_input" and self.format != "instruction"):
                raise FieldError(name, f"{self.format} data has no {name}")
            used = _fields_of(text, name)
            extra = used - (allowed - ({"input"} if name == "template_no_input" else set()))
            if extra:
                raise FieldError(name, f"{name} uses {sorted(extra)}; {self.format} gives {sorted(allowed)}")

    # --- what it is -----------------------------------------------------------------------------
    @property
    def kind(self) -> str:  # instance properties here: the format decides (the base class has constants)
        return "classification" if self.format == "classify" else "generation"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return METRICS.get(self.format, METRICS["instruction"])

    @property
    def primary_metric(self) -> str:
        return self.primary or self.metric_names[0]

    def describe(self) -> str:
        return self.title or Path(self.path.rstrip("/")).stem or self.name

    def text_fields(self) -> list[str]:
        """classify: the fields its prompt reads (every mapped field but the label; default ``text``)."""
        return [k for k in self.columns if k != "label"] or ["text"]

    def resolved(self, base_dir) -> "DatasetTask":
        """A local path made absolute (a Hub id stays as it is)."""
        local = Path(base_dir) / self.path
        if Path(self.path).is_absolute() or not local.exists():
            return self
        return dataclasses.replace(self, path=str(local.resolve()))

    def source(self):
        from peftlab.data.hf_datasets import DatasetSource

        return DatasetSource(self.path, self.subset, self.revision, tuple(sorted(self.splits.items())),
                             tuple(self.split_percent))

    def split_files(self, split: str) -> list[str]:
        from peftlab.data.hf_datasets import files

        return files(self.source())

    # --- examples -------------------------------------------------------------------------------
    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        from peftlab.data.hf_datasets import rows

        records, features = rows(self.source(), split)
        columns = self._columns(records[0][1], split)
        make = getattr(self, f"_{self.format}")
        ctx = {"features": features, "split": split}
        if self.format == "classify":
            ctx.update(values=self.label_values(), words=self.choices())
        return sample_rows([make(rec, columns, {"row": i}, ctx) for i, rec in records], limit)

    def _columns(self, record: dict, split: str) -> dict[str, str]:
        """The format's field -> the dataset's column, the usual names looked up where unmapped."""
        fields = FIELDS[self.format] if self.format != "classify" else {
            **{f: (f,) for f in self.text_fields()}, "label": FIELDS["classify"]["label"],
            **({"text": FIELDS["classify"]["text"]} if not self.columns else {})}
        out = {}
        for name, usual in fields.items():
            column = self.columns.get(name) or next((c for c in usual if c in record), None)
            if column is None and name in OPTIONAL:
                continue
            if column is None or column not in record:
                raise DataError(f"{self.path} ({split}): no column {column or usual[0]!r} for {self.format}'s "
                                f"{name!r}; its columns: {', '.join(record)} (map one: columns: {{{name}: COLUMN}})")
            out[name] = column
        return out

    def _classify(self, rec: dict, columns: dict, meta: dict, ctx: dict) -> Example:
        values = ctx["values"]
        value = self._label_value(rec[columns["label"]], ctx["features"].get(columns["label"]))
        if value not in values:
            raise DataError(f"{self.path} ({ctx['split']}) row {meta['row']}: label {value!r} is not one of {values}")
        label = values.index(value)
        text = self.classify_template.format(**{f: " ".join(str(rec[columns[f]]).split()) for f in self.text_fields()})
        return Example(text, ctx["words"][label], meta, label)

    def _seq2seq(self, rec: dict, columns: dict, meta: dict, ctx: dict) -> Example:
        source, target = (" ".join(str(rec[columns[f]]).split()) for f in ("source", "target"))
        return Example((self.template or "{source}").format(source=source), target, meta)

    def _instruction(self, rec: dict, columns: dict, meta: dict, ctx: dict) -> Example:
        from peftlab.tasks.instruction import ALPACA_INPUT, ALPACA_NO_INPUT

        get = {f: str(rec[c] or "") for f, c in columns.items()}
        if get.get("input", "").strip():
            prompt = (self.template or ALPACA_INPUT).format(instruction=get["instruction"], input=get["input"])
        else:
            prompt = (self.template_no_input or ALPACA_NO_INPUT).format(instruction=get["instruction"])
        category = {"category": get["category"]} if "category" in get else {}
        return Example(prompt, get["response"], {**meta, **category})

    def _chat(self, rec: dict, columns: dict, meta: dict, ctx: dict) -> Example:
        from peftlab.data.chat import check_messages, plain_prompt

        turns = [{"role": _SHAREGPT.get(t.get("from"), t.get("from")), "content": t.get("value")}
                 if isinstance(t, dict) and "from" in t and "role" not in t else t
                 for t in rec[columns["messages"]] or []]
        messages = check_messages(turns, f"{self.path} ({ctx['split']}) row {meta['row']}")
        return Example(plain_prompt(messages), messages[-1]["content"], meta, messages=messages)

    # --- decoders: chat rendering ---------------------------------------------------------------
    def render_for_decoder(self, example: Example) -> Example:
        if example.messages is None:
            return example
        from peftlab.data.chat import plain_segments

        return dataclasses.replace(example, segments=plain_segments(example.messages))

    def render_for_tokenizer(self, example: Example, tokenizer) -> Example:
        """A conversation in the chat template (``chat: auto`` where the tokenizer has one, or
        ``chat_template``): the prompt a served model gets, the whole text in trained pieces."""
        if example.messages is None or self.chat == "plain":
            return example
        if self.chat_template is None and not getattr(tokenizer, "chat_template", None):
            if self.chat == "template":
                raise DataError(f"data.task {self.describe()}: chat: template, but the tokenizer has no chat "
                                f"template; give chat_template or set chat: plain")
            return example
        from peftlab.data.chat import prompt_of, template_segments

        segments = template_segments(tokenizer, example.messages, self.chat_template)
        return dataclasses.replace(example, source=prompt_of(segments), segments=segments)

    # --- classification -------------------------------------------------------------------------
    @property
    def classify_template(self) -> str:
        return self.template or "\n".join(f"{f}: {{{f}}}" for f in self.text_fields()) + "\nlabel:"

    @property
    def prompt_tail(self) -> str:
        if self.format == "classify":
            return _tail(self.classify_template)
        if self.format == "seq2seq":
            return _tail(self.template or "{source}")
        if self.format == "instruction":
            from peftlab.tasks.instruction import ALPACA_INPUT, ALPACA_NO_INPUT

            a, b = _tail(self.template or ALPACA_INPUT), _tail(self.template_no_input or ALPACA_NO_INPUT)
            return a if a == b else ""
        return ""

    def _label_value(self, value: Any, feature) -> str:
        names = getattr(feature, "names", None)  # a ClassLabel column holds indices of its names
        return names[value] if names and isinstance(value, int) and 0 <= value < len(names) else str(value)

    def label_values(self) -> list[str]:
        if self.labels is not None:
            return list(self.labels)
        key = (self.source(), tuple(self.columns.items()))
        if key not in _LABELS:  # read once per process: the train split, whole
            _LABELS[key] = _label_values(self)
        return list(_LABELS[key])

    def choices(self) -> Optional[list[str]]:
        if self.format != "classify":
            return None
        return list(self.label_words) if self.label_words is not None else self.label_values()

    def predict_label(self, text: str) -> int:
        norm = normalised(text)
        return next((i for i, w in enumerate(self.choices()) if normalised(w) == norm), -1)

    # --- scores ---------------------------------------------------------------------------------
    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, Any]:
        from peftlab.evaluate import metrics as m

        preds, refs = list(predictions), [e.target for e in examples]
        if self.format == "classify":
            return m.classification_metrics([self.predict_label(p) for p in preds], [e.label for e in examples],
                                            len(self.choices()))
        if self.format == "seq2seq":
            return {"bleu": m.corpus_bleu(preds, refs), "chrf": m.chrf(preds, refs), **m.rouge_scores(preds, refs)}
        out = m.text_metrics(preds, refs)
        out["exact_match"] = 100.0 * sum(" ".join(p.split()) == " ".join(r.split())
                                         for p, r in zip(preds, refs)) / max(len(refs), 1)
        return out

    def row_stats(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        if self.format != "classify":
            return super().row_stats(predictions, examples)
        from peftlab.evaluate.rows import classification_rows

        return classification_rows([self.predict_label(p) for p in predictions], [e.label for e in examples],
                                   len(self.choices()))


_LABELS: dict = {}  # (dataset, columns) -> its label values


def _label_values(task: DatasetTask) -> list[str]:
    """The label values of the train split: a ``ClassLabel``'s names, else the values seen, sorted."""
    from peftlab.data.hf_datasets import rows

    records, features = rows(task.source(), "train")
    column = task._columns(records[0][1], "train")["label"]
    names = getattr(features.get(column), "names", None)
    return list(names) if names else sorted({task._label_value(r[column], None) for _, r in records})


def _tail(template: str) -> str:
    """The fixed text after a template's last field (kept when a long prompt loses its middle)."""
    last = None
    for m in re.finditer(r"\{[^{}]*\}", template):
        last = m
    return template[last.end():] if last else ""


def _fields_of(template: str, name: str) -> set[str]:
    import string

    from peftlab.config import FieldError

    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise FieldError(name, f"{name} is malformed ({e}); write literal braces as '{{{{' and '}}}}'") from None
