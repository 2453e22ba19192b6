"""The run config: what ``peftlab train CONFIG.yaml`` reads, as typed dataclasses.

Each field has a comment; YAML files in ``configs/`` are saved instances of ``RunConfig``.
Method configs are dispatched by their ``name`` through the registry in ``peftlab.methods``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from peftlab.data.prompts import SEED000_TEMPLATE
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


@dataclass(frozen=True)
class DataSpec:
    task: Literal["code2doc"] = "code2doc"
    path: str = "stdlib"  # "stdlib" (the embedded corpus), a dir with {train,valid,test}.jsonl, or a file
    train_split: str = "train"
    eval_split: str = "valid"  # validation loss during training
    test_split: str = "test"  # generation metrics at the end
    target_field: Literal["docstring_tokens", "docstring"] = "docstring_tokens"
    template: str = SEED000_TEMPLATE  # prompt; fields: {func_name}, {code}, {path}
    max_source_length: int = 256  # longer prompts are truncated (and counted in the log)
    max_target_length: int = 64
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = 200

    def __post_init__(self):
        if self.max_source_length < 8 or self.max_target_length < 2:
            raise ValueError("max_source_length must be >= 8 and max_target_length >= 2")
        from peftlab.config import FieldError
        from peftlab.data.prompts import template_fields
        from peftlab.errors import ConfigError

        try:
            template_fields(self.template)
        except ConfigError as e:
            raise FieldError("template", str(e)) from None


@dataclass(frozen=True)
class TrainSpec:
    max_steps: Optional[int] = 100  # optimizer steps; None = until max_seconds
    max_seconds: Optional[float] = None  # wall-clock budget (the seed compared methods at equal time)
    batch_size: int = 8  # per device, per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-3
    optimizer: Literal["adamw", "adafactor"] = "adamw"  # adafactor: RMS-scaled steps (T5 pretraining)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up, then linear decay to 0 at max_steps
    max_grad_norm: Optional[float] = 1.0
    skip_nonfinite: int = 0  # optimizer steps with a NaN/inf loss or gradient to skip before stopping
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast; trainable params stay fp32
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
    fused_kernels: bool = True  # one-kernel forms of composed ops: LoRA's update, T5's tanh-GELU
    fast_dropout: bool = False  # dropout with a cheaper random mask (same rate, another random stream)
    # under bf16/fp16 autocast, store frozen linear weights in that dtype (what autocast casts them to
    # on every call anyway): less memory, no per-step casts; they stay so after training
    cast_frozen: bool = False
    # cross-entropy through the output layer this many label positions at a time, never the full
    # (positions x vocabulary) logits; padding positions are skipped. None = the model's own loss
    loss_chunk: Optional[int] = None

    def __post_init__(self):
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("set max_steps, max_seconds, or both (the budget)")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("max_steps must be >= 0")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")
        if self.loss_chunk is not None and self.loss_chunk < 1:
            from peftlab.config import FieldError

            raise FieldError("loss_chunk", f"loss_chunk must be >= 1 or null, got {self.loss_chunk}")


@dataclass(frozen=True)
class EvalSpec:
    num_beams: int = 1
    max_new_tokens: int = 48
    no_repeat_ngram_size: int = 0  # >0 forbids repeating any n-gram of this size (0 = plain decoding)
    repetition_penalty: float = 1.0
    batch_size: int = 16
    max_examples: Optional[int] = 200  # test examples scored; None = the whole split


@dataclass(frozen=True)
class RunConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    methods: list[MethodConfig] = field(default_factory=list)  # applied in order; [] = zero-shot
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    label: Optional[str] = None  # row name in comparison tables; default from the methods

    def display_name(self) -> str:
        if self.label:
            return self.label
        return " + ".join(m.describe() for m in self.methods) or "zero-shot"
