"""The speed spec: what ``peftlab speed SPEC.yaml`` times, as typed dataclasses.

A spec names a model (a shipped/local model, or a family plus HF config fields: random weights with
the shapes of a real model), a batch shape, precisions, and a list of cases. A *train* case is one
PEFT method as peftlab configures it (``methods``) beside the same method as HF peft configures it
(``peft``: the dict ``peft.get_peft_config`` takes), so a new method is one entry::

    - name: lora-r32-qv
      methods: [{name: lora, r: 32, alpha: 32, targets: [q, v]}]
      peft: {peft_type: LORA, task_type: SEQ_2_SEQ_LM, r: 32, lora_alpha: 32, target_modules: [q, v]}

``reference: hf`` compares against the plain transformers model with every weight trained (full
fine-tuning); ``reference: none`` times peftlab alone (a method peft does not have). ``compare``
names other peftlab method lists timed beside ``methods`` (a composite method against the parts it
is built from, AdapterDrop's ``drop_lowest`` values)::

    - name: unipelt
      methods: [{name: unipelt}]
      reference: none
      compare: {parts: [{name: lora}, {name: prefix, length: 10}, {name: pfeiffer}]}

An *inference* case times, for each implementation, a teacher-forced forward pass over the batch
and greedy generation of exactly ``inference.new_tokens`` tokens (``reference: hf-stock``: the
untouched transformers model); a *generate* case times decoding code→doc sources (see
``peftlab.lab.speed.generate``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from peftlab.methods.base import MethodConfig

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class ModelShape:
    # a shipped short name (mini-t5), a local directory or a hub id: its weights are loaded ...
    name: Optional[str] = None
    # ... or a family ("t5", "llama", "gpt2") built from ``config`` with random weights (the shapes of a model)
    family: Optional[Literal["t5", "llama", "gpt2"]] = None
    config: dict[str, Any] = field(default_factory=dict)  # HF config fields (overrides, with ``name``)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # every base weight's dtype, both sides
    seed: int = 0  # random weights are drawn from it

    def __post_init__(self):
        if (self.name is None) == (self.family is None):
            from peftlab.config import FieldError

            raise FieldError("family", "give exactly one of model.name (weights to load) or model.family "
                                       "(built from model.config)")


@dataclass(frozen=True)
class BatchShape:
    size: int = 8  # sequences per step
    source: int = 256  # encoder tokens (seq2seq); a decoder's prompt, or its whole sequence with target 0
    # decoder tokens (seq2seq); a decoder-only model's answer after its source-token prompt, the prompt
    # labelled -100 as fine-tuning on prompts labels it (0: every position a label, as in pretraining)
    target: int = 0
    # rows carry task_ids = row % tasks (HyperFormer++'s mixed-task batches; only implementations
    # whose methods read task_ids get them); 0: no task ids
    tasks: int = 0

    def __post_init__(self):
        from peftlab.config import FieldError, at_least

        if self.size < 1 or self.source < 1 or self.target < 0:
            raise FieldError("size", "batch size and source must be >= 1, target >= 0")
        at_least(self, 0, "tasks")

    def tokens(self) -> int:
        """What tokens/s counts: source + target tokens of every sequence (as peft's anchors do)."""
        return self.size * (self.source + self.target)

    def label(self) -> str:
        shape = f"{self.size}x({self.source}+{self.target})" if self.target else f"{self.size}x{self.source}"
        return f"{shape}, {self.tasks} tasks" if self.tasks else shape


@dataclass(frozen=True)
class GenerateShape:
    split: str = "test"  # code->doc split the sources come from (model.name must have a tokenizer)
    examples: int = 64  # sources decoded per repetition
    batch_size: int = 16  # peftlab's batched decoding
    num_beams: int = 1
    max_new_tokens: int = 48
    max_source_length: int = 256


@dataclass(frozen=True)
class InferenceShape:
    new_tokens: int = 32  # greedy generation of exactly this many tokens (min = max); 0: the forward pass only
    rows: Optional[int] = None  # the batch's first rows generate; None = every row
    # a decoder-only model generates after each row's first ``prompt`` tokens; None = its source tokens
    # (an encoder-decoder reads the whole source)
    prompt: Optional[int] = None

    def __post_init__(self):
        from peftlab.config import at_least

        at_least(self, 0, "new_tokens")
        at_least(self, 1, "rows", "prompt")


# a name of ``compare`` becomes the row "peftlab:<name>"
_COMPARE_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class CaseSpec:
    name: str  # row label, e.g. "lora-r32-qv"
    kind: Literal["train", "inference", "generate"] = "train"
    methods: list[MethodConfig] = field(default_factory=list)  # peftlab's side, applied in order
    peft: Optional[dict[str, Any]] = None  # the equivalent HF peft config (peft.get_peft_config input)
    # what peftlab is compared with: HF peft (``peft``), the plain HF model trained in full (``hf``,
    # train cases), the untouched HF model (``hf-stock``, inference cases), or nothing (``none``:
    # peft has no such method; peftlab is timed alone, or beside ``compare``)
    reference: Literal["peft", "hf", "hf-stock", "none"] = "peft"
    # other peftlab method lists timed beside ``methods``, on the same base and batch (rows
    # "peftlab:<name>", each with its tokens/s over the case's peftlab row's): a composite method
    # against its parts, AdapterDrop's drop_lowest values, ...
    compare: dict[str, list[MethodConfig]] = field(default_factory=dict)
    # peftlab's models run under its attention hook even where no method attaches to it (what the
    # hook costs with nothing attached, beside ``reference: hf`` / ``hf-stock``)
    attention_hook: bool = False
    compile_reference: bool = True  # train cases: also time the reference under torch.compile (where it compiles)
    train: dict[str, Any] = field(default_factory=dict)  # peftlab TrainSpec fields (speed options; train cases)
    # extra peftlab columns of a train case: variant name -> TrainSpec fields (e.g. a lever switched off)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: Optional[ModelShape] = None  # overrides the spec's model
    batch: Optional[BatchShape] = None  # overrides the spec's batch
    reps: Optional[int] = None  # overrides the spec's timed repetitions
    warmup: Optional[int] = None  # overrides the spec's warm-up
    inference: InferenceShape = field(default_factory=InferenceShape)  # kind: inference
    generate: GenerateShape = field(default_factory=GenerateShape)  # kind: generate
    note: str = ""  # printed with the case (e.g. why there is no reference)
    # why peftlab and the reference train different numbers of parameters (e.g. per-head vs
    # per-layer gates); empty = the counts must be equal, or the spec describes two methods
    count_differs: str = ""

    def __post_init__(self):
        from peftlab.config import FieldError, at_least

        timed = self.kind in ("train", "inference")  # the kinds that time implementations of methods
        if timed and not self.methods:
            raise FieldError("methods", f"{'an' if self.kind == 'inference' else 'a'} {self.kind} case needs at least "
                                        f"one peftlab method")
        if timed and self.reference == "peft" and not self.peft:
            raise FieldError("peft", "reference: peft needs the equivalent peft config "
                                     "(or reference: none/hf/hf-stock)")
        if self.peft is not None and "peft_type" not in self.peft:
            raise FieldError("peft", "the peft config needs a peft_type (LORA, IA3, PROMPT_TUNING, ...)")
        if self.kind == "train" and self.reference == "hf-stock":
            raise FieldError("reference", "hf-stock (the untouched model) trains nothing: a train case compares "
                                          "with hf (the plain model trained in full)")
        if self.kind == "inference" and self.reference == "hf":
            raise FieldError("reference", "an inference case compares with hf-stock (the untouched model), not hf")
        if self.kind != "train":
            for name in ("variants", "train"):
                if getattr(self, name):
                    raise FieldError(name, f"TrainSpec options time training: a {self.kind} case has none")
        if self.kind == "generate" and self.compare:
            raise FieldError("compare", "a generate case times its own implementations (loop, batched, merged)")
        if self.kind != "inference" and self.inference != InferenceShape():
            raise FieldError("inference", f"only an inference case reads it (this one is kind: {self.kind})")
        for name, methods in self.compare.items():
            if not _COMPARE_NAME.fullmatch(name):
                raise FieldError("compare", f"{name!r}: a name of letters, digits and _ . + - (its row is "
                                            f"peftlab:<name>)")
            if not methods:
                raise FieldError("compare", f"{name}: name at least one peftlab method")
        at_least(self, 1, "reps")
        at_least(self, 0, "warmup")


@dataclass(frozen=True)
class SpeedSpec:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = None  # torch CPU threads; None = torch's default
    precisions: list[Precision] = field(default_factory=lambda: ["fp32"])  # autocast dtype; fp32 = none
    warmup: int = 1  # untimed steps per implementation (torch.compile compiles here)
    reps: int = 6  # timed steps per implementation, interleaved
    lr: float = 1e-4  # AdamW, the trainable parameters in fp32, both sides
    memory: bool = True  # peak memory of each implementation in a fresh subprocess
    memory_steps: int = 2  # steps that subprocess trains after the warm-up
    model: Optional[ModelShape] = None
    batch: BatchShape = field(default_factory=BatchShape)
    cases: list[CaseSpec] = field(default_factory=list)

    def __post_init__(self):
        from peftlab.config import FieldError

        if self.reps < 1 or self.warmup < 0:
            raise FieldError("reps", "reps must be >= 1 and warmup >= 0")
        if not self.cases:
            raise FieldError("cases", "the spec has no cases")
        if not self.precisions:
            raise FieldError("precisions", "name at least one precision (fp32, bf16, fp16)")
        for c in self.cases:
            if (c.model or self.model) is None:
                raise FieldError("model", f"case {c.name!r} has no model (set model: at the top or in the case)")
            batch = self.batch_of(c)
            if c.inference.rows is not None and c.inference.rows > batch.size:
                raise FieldError("cases", f"{c.name}: inference.rows {c.inference.rows} > batch.size {batch.size}")
            if c.inference.prompt is not None and c.inference.prompt > batch.source + batch.target:
                raise FieldError("cases", f"{c.name}: inference.prompt {c.inference.prompt} > the batch's "
                                          f"{batch.source + batch.target} tokens a row")
        names = [c.name for c in self.cases]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise FieldError("cases", f"case names must be unique; repeated: {', '.join(sorted(dup))}")

    def model_of(self, case: CaseSpec) -> ModelShape:
        return case.model or self.model

    def batch_of(self, case: CaseSpec) -> BatchShape:
        return case.batch or self.batch

    def reps_of(self, case: CaseSpec) -> int:
        return self.reps if case.reps is None else case.reps

    def warmup_of(self, case: CaseSpec) -> int:
        return self.warmup if case.warmup is None else case.warmup


def load_spec(path: str | Path, overrides=()) -> SpeedSpec:
    """Read and validate a spec; errors name ``file:line: field``. ``overrides``: ``key=value``."""
    from peftlab.config import load_config

    spec = load_config(SpeedSpec, path, overrides)
    for case in spec.cases:  # TrainSpec options are checked now, not after an hour of other cases
        peftlab_train_spec(case.train, where=f"{path}: cases.{case.name}.train")
        for name, opts in case.variants.items():
            peftlab_train_spec({**case.train, **opts}, where=f"{path}: cases.{case.name}.variants.{name}")
    return spec


def peftlab_train_spec(options: dict, where: str = "train"):
    """A ``TrainSpec`` with the case's speed options (its budget fields are unused here)."""
    from peftlab.config import from_dict
    from peftlab.schema import TrainSpec

    return from_dict(TrainSpec, dict(options), source=where)
