"""The run config: what ``peftlab train CONFIG.yaml`` reads, as typed dataclasses.

Each field has a comment; YAML files in ``configs/`` are saved instances of ``RunConfig``.
Method configs are dispatched by their ``name`` through the registry in ``peftlab.methods``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional, Union

from peftlab.tasks import TaskConfig, default_task
from peftlab.methods.base import MethodConfig


@dataclass(frozen=True)
class ModelSpec:
    name: str = "mini-t5"  # short name (mini-t5, mini-llama), local directory, or hub id
    init: Literal["pretrained", "random"] = "pretrained"  # random: same architecture, fresh weights
    config: dict[str, Any] = field(default_factory=dict)  # overrides of the HF model config
    tokenizer: Optional[str] = None  # defaults to the model's own tokenizer
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # frozen base weights' dtype
    revision: Optional[str] = None  # hub revision (commit, branch, tag)
    quantize: Literal["none", "8bit", "4bit"] = "none"  # frozen base in bitsandbytes int8 / 4-bit (QLoRA)
    quant_type: Literal["nf4", "fp4"] = "nf4"  # 4-bit data type
    double_quant: bool = True  # 4-bit: quantize the quantization constants too (QLoRA)


_MOVED = "moved into data.task (e.g. data: {task: {name: code2doc, path: stdlib}})"


@dataclass(frozen=True)
class DataSpec:
    # the task (``code2doc``, or a mapping with its name and options: ``{name: classify, path: ...}``),
    # or a list of tasks trained together (multi-task: each example carries its task's index)
    task: Union[TaskConfig, tuple[TaskConfig, ...]] = field(default_factory=default_task)
    train_split: str = "train"
    eval_split: str = "valid"  # validation loss during training
    test_split: str = "test"  # task metrics at the end
    max_source_length: int = 256  # longer prompts lose their middle (the template's tail is kept); counted
    max_target_length: int = 64
    max_train_examples: Optional[int] = None  # per task
    max_eval_examples: Optional[int] = 200  # per task
    moved_keys: ClassVar[dict] = {"path": "data.path " + _MOVED, "template": "data.template " + _MOVED,
                                  "target_field": "data.target_field " + _MOVED}

    def __post_init__(self):
        from peftlab.config import FieldError, at_least

        at_least(self, 8, "max_source_length")
        at_least(self, 2, "max_target_length")
        at_least(self, 1, "max_train_examples", "max_eval_examples")
        if isinstance(self.task, tuple):
            if not self.task:
                raise FieldError("task", "name at least one task")
            names = [t.describe() for t in self.task]
            if len(set(names)) != len(names):
                raise FieldError("task", f"tasks trained together need distinct names (give each a title): {names}")

    @property
    def tasks(self) -> tuple[TaskConfig, ...]:
        return self.task if isinstance(self.task, tuple) else (self.task,)


@dataclass(frozen=True)
class TrainSpec:
    max_steps: Optional[int] = 100  # optimizer steps; None = until max_seconds
    max_seconds: Optional[float] = None  # wall-clock budget (the seed compared methods at equal time)
    batch_size: int = 8  # per device, per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-3
    optimizer: Literal["adamw", "adafactor"] = "adamw"  # adafactor: RMS-scaled steps (T5 pretraining)
    weight_decay: float = 0.0
    # LoRA+ (Hayou et al., 2024): the B factors of LoRA-family updates (each method's modules declare
    # them) step at lr x this ratio, A at lr (the paper: 16); None = one rate for all
    loraplus_ratio: Optional[float] = None
    warmup_steps: int = 0  # linear warm-up, then linear decay to 0 at max_steps
    max_grad_norm: Optional[float] = 1.0
    skip_nonfinite: int = 0  # optimizer steps with a NaN/inf loss or gradient to skip before stopping
    # autocast; trainable params stay fp32. auto: bf16 where the device computes it natively (GPU >= sm80,
    # CPU with AVX512-BF16/AMX), fp16 + loss scaling on older GPUs, else fp32 (peftlab.device.resolve_precision)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    seed: int = 0
    log_every: int = 10  # optimizer steps between log rows
    eval_every: Optional[int] = None  # optimizer steps between validation-loss evals (and at the end)
    checkpoint_every: Optional[int] = None  # optimizer steps between resumable checkpoints
    keep_checkpoints: int = 2  # newest N kept; older ones pruned only after a new one is complete
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: Optional[int] = None  # torch CPU threads; None = torch's default
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    strategy: Literal["auto", "fsdp"] = "auto"  # auto: DDP when launched on several processes; fsdp: shard
    # speed levers (peftlab.train.fast); each trains the same weights as the plain path
    compile: bool = False  # torch.compile the model (inductor, CPU and GPU); the first steps compile
    fused_kernels: bool = True  # one-kernel forms of composed ops: LoRA's update, T5's tanh-GELU, RMSNorm; causal attention by blocks on CPU
    # dropout with a cheaper random mask (same rate, another random stream; on by default from config version 2)
    fast_dropout: bool = True
    # under bf16/fp16 autocast, store frozen linear weights in that dtype (what autocast casts them to
    # on every call anyway): less memory, no per-step casts; they stay so after training
    cast_frozen: bool = False
    # cross-entropy through the output layer this many label positions at a time, never the full
    # (positions x vocabulary) logits; positions labelled -100 (padding, a decoder's prompt) are
    # skipped. None = the model's own loss; auto = 1024 where the output layer allows it (a plain
    # bias-free linear layer: peftlab.kernels.head_loss.resolve_loss_chunk), the model's own loss elsewhere
    loss_chunk: Union[int, Literal["auto"], None] = "auto"
    # experiment trackers that get the log rows and the config too (peftlab.train.trackers; optional
    # packages, e.g. pip install 'peftlab[trackers]' for tensorboard); train_log.jsonl is written either way
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = field(default_factory=list)
    report_project: str = "peftlab"  # the W&B / trackio project, the MLflow experiment

    def __post_init__(self):
        from peftlab.config import FieldError, at_least, positive

        if len(set(self.report_to)) != len(self.report_to):
            raise FieldError("report_to", f"names a tracker twice: {self.report_to}")

        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("set max_steps, max_seconds, or both (the budget)")
        # every numeric field, here at load time: a bad value must not surface after training
        at_least(self, 0, "max_steps", "weight_decay", "warmup_steps", "skip_nonfinite", "seed")
        at_least(self, 1, "batch_size", "grad_accum", "log_every", "eval_every", "checkpoint_every",
                 "keep_checkpoints", "num_threads")
        positive(self, "max_seconds", "max_grad_norm", "loraplus_ratio")
        if self.max_steps != 0:  # lr 0 only where nothing is trained (zero-shot configs say so)
            positive(self, "lr")
        if self.loss_chunk != "auto":
            at_least(self, 1, "loss_chunk")


_SELECTABLE = {"num_beams": int, "no_repeat_ngram_size": int, "length_penalty": float, "repetition_penalty": float,
               "max_new_tokens": int}


@dataclass(frozen=True)
class EvalSpec:
    num_beams: int = 1
    max_new_tokens: int = 48
    no_repeat_ngram_size: int = 0  # >0 forbids repeating any n-gram of this size (0 = plain decoding)
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0  # beam search: >1 favours longer outputs
    do_sample: bool = False  # sample instead of greedy/beam search (seeded by ``seed``)
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with this much probability
    seed: int = 0  # sampling seed
    batch_size: int = 16
    max_examples: Optional[int] = 200  # test examples scored; None = the whole split
    # decoding settings chosen on the validation split (never the test), per generation task:
    # a grid such as {num_beams: [1, 4], no_repeat_ngram_size: [0, 3]}; the choice is in metrics.json
    select: dict[str, list[Any]] = field(default_factory=dict)
    select_examples: Optional[int] = 64  # validation rows the selection decodes (a fixed-seed sample); None = all
    floors: bool = True  # score model-free floors beside the method (best constant / majority, BM25 retrieval)
    # causal LMs: also the perplexity on a text/source file, a directory of .py/.txt, or "stdlib"
    # (its held-out test-split files) -> metrics.json "ppl" (peftlab.evaluate.perplexity)
    perplexity: Optional[str] = None
    perplexity_window: Optional[int] = None  # tokens per window; None = max_source_length + max_target_length
    perplexity_stride: Optional[int] = None  # tokens between window starts; None = window // 2

    def __post_init__(self):
        from peftlab.config import FieldError

        for key, values in self.select.items():
            kind = _SELECTABLE.get(key)
            if kind is None:
                raise FieldError("select", f"cannot select {key!r}; selectable: {', '.join(sorted(_SELECTABLE))}")
            if not isinstance(values, list) or not values:
                raise FieldError("select", f"{key}: give a non-empty list of values, got {values!r}")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
                    raise FieldError("select", f"{key}: {v!r} is not {'an integer' if kind is int else 'a number'}")
                if v < (1 if key in ("num_beams", "max_new_tokens") else 0):
                    raise FieldError("select", f"{key}: {v!r} is out of range")
        from peftlab.config import at_least, positive

        at_least(self, 1, "num_beams", "max_new_tokens", "batch_size", "max_examples", "select_examples")
        at_least(self, 0, "no_repeat_ngram_size", "seed")
        positive(self, "repetition_penalty", "length_penalty", "temperature", "top_p")
        if self.top_p > 1:
            from peftlab.config import FieldError

            raise FieldError("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if self.perplexity_window is not None and self.perplexity_window < 2:
            raise FieldError("perplexity_window", f"perplexity_window must be >= 2, got {self.perplexity_window}")
        if self.perplexity_stride is not None and not 1 <= self.perplexity_stride <= (self.perplexity_window or 2**31):
            raise FieldError("perplexity_stride", f"perplexity_stride must be in [1, perplexity_window], "
                                                  f"got {self.perplexity_stride}")


# The config schema's version. A version changes when a default does: a config that says
# ``version: N`` (every run's config.yaml does) gets version N's defaults for the fields it leaves
# out, so a run made under old defaults is rebuilt exactly from its config.yaml; a config that says
# no version gets today's. VERSION_DEFAULTS holds, per earlier version, the defaults changed after it.
CONFIG_VERSION = 2
VERSION_DEFAULTS: dict[int, dict[str, dict[str, Any]]] = {
    1: {"train": {"fast_dropout": False}},  # version 2 made the measured-neutral speed lever the default
}

# Train fields that change how fast a run goes or where it reports, not what it computes beyond the
# tolerance the lever tests hold (tests/kernels/test_levers.py): a bench or compare reuses a finished
# run that differs from the plan only in these (its config.yaml records what it ran with)
RESULT_NEUTRAL_TRAIN = ("report_to", "report_project", "log_every", "checkpoint_every", "keep_checkpoints",
                        "num_threads", "compile", "fused_kernels", "fast_dropout", "cast_frozen", "loss_chunk",
                        "gradient_checkpointing")


@dataclass(frozen=True)
class RunConfig:
    version: int = CONFIG_VERSION  # the schema version its defaults are read under (CONFIG_VERSION above)
    model: ModelSpec = field(default_factory=ModelSpec)
    methods: list[MethodConfig] = field(default_factory=list)  # applied in order; [] = zero-shot
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    label: Optional[str] = None  # row name in comparison tables; default from the methods

    def __post_init__(self):
        from peftlab.config import FieldError

        if not 1 <= self.version <= CONFIG_VERSION:
            raise FieldError("version", f"config version {self.version} is not one this peftlab reads "
                                        f"(1..{CONFIG_VERSION}); a newer peftlab wrote it")

    @classmethod
    def versioned(cls, data: dict) -> dict:
        """``data`` with the defaults of the version it declares for the fields it leaves out."""
        version = data.get("version", CONFIG_VERSION)
        if not isinstance(version, int) or version >= CONFIG_VERSION:
            return data
        out = dict(data)
        for v in sorted(VERSION_DEFAULTS):
            if v < version:
                continue
            for section, defaults in VERSION_DEFAULTS[v].items():
                given = out.get(section) if isinstance(out.get(section), dict) else {}
                out[section] = {**{k: d for k, d in defaults.items() if k not in given}, **given}
        return out

    def display_name(self) -> str:
        if self.label:
            return self.label
        return " + ".join(m.describe() for m in self.methods) or "zero-shot"
