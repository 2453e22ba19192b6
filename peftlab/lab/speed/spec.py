"""The speed spec: what ``peftlab speed SPEC.yaml`` times, as typed dataclasses.

A spec names a model (a shipped/local model, or a family plus HF config fields: random weights with
the shapes of a real model), a batch shape, precisions, and a list of cases. A *train* case is one
PEFT method as peftlab configures it (``methods``) beside the same method as HF peft configures it
(``peft``: the dict ``peft.get_peft_config`` takes), so a new method is one entry::

    - name: lora-r32-qv
      methods: [{name: lora, r: 32, alpha: 32, targets: [q, v]}]
      peft: {peft_type: LORA, task_type: SEQ_2_SEQ_LM, r: 32, lora_alpha: 32, target_modules: [q, v]}

``reference: hf`` compares against the plain transformers model with every weight trained (full
fine-tuning); ``reference: none`` times peftlab alone (a method peft does not have). A *generate*
case times decoding (see ``peftlab.lab.speed.generate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from peftlab.methods.base import MethodConfig

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class ModelShape:
    # a shipped short name (mini-t5), a local directory or a hub id: its weights are loaded ...
    name: Optional[str] = None
    # ... or a family ("t5", "llama") built from ``config`` with random weights (the shapes of a model)
    family: Optional[Literal["t5", "llama"]] = None
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

    def __post_init__(self):
        if self.size < 1 or self.source < 1 or self.target < 0:
            from peftlab.config import FieldError

            raise FieldError("size", "batch size and source must be >= 1, target >= 0")

    def tokens(self) -> int:
        """What tokens/s counts: source + target tokens of every sequence (as peft's anchors do)."""
        return self.size * (self.source + self.target)

    def label(self) -> str:
        return f"{self.size}x({self.source}+{self.target})" if self.target else f"{self.size}x{self.source}"


@dataclass(frozen=True)
class GenerateShape:
    split: str = "test"  # code->doc split the sources come from (model.name must have a tokenizer)
    examples: int = 64  # sources decoded per repetition
    batch_size: int = 16  # peftlab's batched decoding
    num_beams: int = 1
    max_new_tokens: int = 48
    max_source_length: int = 256


@dataclass(frozen=True)
class CaseSpec:
    name: str  # row label, e.g. "lora-r32-qv"
    kind: Literal["train", "generate"] = "train"
    methods: list[MethodConfig] = field(default_factory=list)  # peftlab's side, applied in order
    peft: Optional[dict[str, Any]] = None  # the equivalent HF peft config (peft.get_peft_config input)
    # what peftlab is compared with: HF peft (``peft``), the plain HF model trained in full (``hf``),
    # or nothing (``none``: peft has no such method; peftlab is timed alone)
    reference: Literal["peft", "hf", "none"] = "peft"
    compile_reference: bool = True  # also time the reference under torch.compile (where it compiles)
    train: dict[str, Any] = field(default_factory=dict)  # peftlab TrainSpec fields (speed options)
    # extra peftlab columns: variant name -> TrainSpec fields (e.g. a lever switched off)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: Optional[ModelShape] = None  # overrides the spec's model
    batch: Optional[BatchShape] = None  # overrides the spec's batch
    generate: GenerateShape = field(default_factory=GenerateShape)  # kind: generate
    note: str = ""  # printed with the case (e.g. why there is no reference)
    # why peftlab and the reference train different numbers of parameters (e.g. per-head vs
    # per-layer gates); empty = the counts must be equal, or the spec describes two methods
    count_differs: str = ""

    def __post_init__(self):
        from peftlab.config import FieldError

        if self.kind == "train" and not self.methods:
            raise FieldError("methods", "a train case needs at least one peftlab method")
        if self.kind == "train" and self.reference == "peft" and not self.peft:
            raise FieldError("peft", "reference: peft needs the equivalent peft config (or reference: none/hf)")
        if self.peft is not None and "peft_type" not in self.peft:
            raise FieldError("peft", "the peft config needs a peft_type (LORA, IA3, PROMPT_TUNING, ...)")


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
        for i, c in enumerate(self.cases):
            if (c.model or self.model) is None:
                raise FieldError("model", f"case {c.name!r} has no model (set model: at the top or in the case)")
        names = [c.name for c in self.cases]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise FieldError("cases", f"case names must be unique; repeated: {', '.join(sorted(dup))}")

    def model_of(self, case: CaseSpec) -> ModelShape:
        return case.model or self.model

    def batch_of(self, case: CaseSpec) -> BatchShape:
        return case.batch or self.batch


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
