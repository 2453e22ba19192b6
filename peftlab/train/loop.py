"""The one training loop every method (and pretraining) runs through.

On ``accelerate``: CPU or GPU, bf16/fp16 autocast, gradient accumulation, DDP sharding by rank.
AdamW with linear warm-up then linear decay to zero at the end of the budget; the budget is
optimizer steps, wall-clock seconds, or both (first reached wins). With a time budget the decay
follows elapsed time, so every method gets a full schedule in the same seconds. Periodic atomic
checkpoints make a run resumable at the exact batch it stopped at.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

import torch

from peftlab.data.seq2seq import BatchPlan, tokens_in
from peftlab.errors import ConfigError, PeftlabError
from peftlab.methods.state import step_hooks
from peftlab.models.quantize import is_quantized_model
from peftlab.train import sharding
from peftlab.train.fast import training_loss
from peftlab.train.optim import lr_factor, make_optimizer
from peftlab.train.trackers import Tracking, make_trackers, tracked
from peftlab.train.checkpoint import (
    check_fits,
    list_checkpoints,
    load_checkpoint,
    local_state,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
    set_aside_damaged,
)


class TrainingError(PeftlabError):
    """Training cannot go on (a non-finite loss or gradient); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    tokens: int
    tokens_per_second: float
    final_loss: Optional[float]
    eval_loss: Optional[float]
    peak_memory_bytes: int
    peak_memory_kind: str  # "cuda_max_allocated" or "cpu_max_rss" (whole process, from the start of this run)
    stopped_by: str  # "max_steps", "max_seconds", "halted" or "nothing_to_train"
    strategy: str = "single"  # "single", "ddp" or "fsdp", with the process count: "fsdp x2"
    precision: str = "no"  # the autocast actually used ("bf16", "fp16" or "no"): spec.mixed_precision resolved
    # CPU runs: the process's CPU time over the timed steps / (train_seconds x torch threads). Near 1 on
    # a machine the run had to itself; well below it, other work shared the cores and the timings with it
    cpu_share: Optional[float] = None
    # under FSDP the model stays sharded: its trained tensors, whole, on the main process
    gathered: Optional[dict] = field(default=None, repr=False)


@dataclass(frozen=True)
class LoopOptions:
    checkpoint_dir: Optional[Path] = None
    checkpoint_every: Optional[int] = None  # optimizer steps; None = only at the end
    keep_checkpoints: int = 2
    resume: bool = False
    progress: bool = True
    desc: str = "train"
    halt_at: Optional[int] = None  # stop after this step's checkpoint, as if killed (split long jobs)
    tracking: Optional[Tracking] = None  # the run as spec.report_to's trackers name it (default: desc)


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    from peftlab.device import peak_rss_bytes

    return peak_rss_bytes(), "cpu_max_rss"


def reset_peak_memory(device: torch.device) -> None:
    """Start a run's peak from now: in a bench of many runs in one process, the process-wide peak
    of an earlier run would otherwise be reported by every later one. On Linux, writing 5 to
    /proc/self/clear_refs resets the RSS high-water mark (VmHWM, what peak_rss_bytes reads)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the peak stays process-wide (still an upper bound)
        pass


def process_state():
    """accelerate's per-process state; on a machine without CUDA, launched processes use gloo."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def make_accelerator(spec, log_with: Optional[list] = None):
    """accelerate's Accelerator for ``spec``: its device, and ``spec.mixed_precision`` resolved for that
    device (``peftlab.device.resolve_precision``; what it chose is ``accelerator.mixed_precision``);
    ``log_with``: its trackers (``peftlab.train.trackers``)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from peftlab.device import resolve_precision

    # accelerate keeps process-wide singletons; one process may run many configs (a bench) with
    # different precision/accumulation, so start each from a clean state (the process group stays).
    AcceleratorState._reset_state()
    GradientState._reset_state()
    process_state()
    cpu = spec.device == "cpu" or (spec.device == "auto" and not torch.cuda.is_available())
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' asked for, but torch sees no CUDA device")
    precision = resolve_precision(spec.mixed_precision, "cpu" if cpu else "cuda")
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=spec.grad_accum, cpu=cpu,
                       log_with=log_with)


@torch.no_grad()
def evaluate_loss(model, plan: BatchPlan, accelerator, max_batches: Optional[int] = None) -> float:
    """Token-level mean cross-entropy over a split (one pass, fixed order)."""
    was_training = model.training
    model.eval()
    causal_shift = not accelerator.unwrap_model(model).config.is_encoder_decoder
    total, count = 0.0, 0
    for i, rows in enumerate(plan.epoch_batches(0)):
        if max_batches is not None and i >= max_batches:
            break
        batch = plan.make_batch(rows, 0)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            logits = model(**batch).logits.float()
        labels = batch["labels"]
        if causal_shift:  # causal LM: logits at t predict token t+1 (seq2seq: label t)
            logits, labels = logits[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(loss)
        count += int((labels != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


class _Parallel:
    """The model and optimizer as the processes share them: one process, DDP (accelerate wraps
    the model), or FSDP (peftlab shards it); and how a checkpoint leaves and re-enters them."""

    def __init__(self, model, params, spec, accelerator):
        self.accelerator = accelerator
        n = accelerator.num_processes
        self.fsdp = sharding.fsdp_requested(spec) and n > 1
        if self.fsdp:  # shard first: fully_shard swaps the parameters the optimizer must hold
            if accelerator.mixed_precision == "fp16":
                raise ConfigError(f"train.mixed_precision: fp16 ({spec.mixed_precision} on this GPU) under "
                                  "train.strategy fsdp needs a sharded loss scaler; use no (or bf16 on a GPU "
                                  "that has it)")
            sharding.shard(model)
            params = [p for p in model.parameters() if p.requires_grad]
            # the optimizer stays ours: accelerate's FSDP2 prepare() insists on wrapping the model too
            self.model, self.optimizer = model, make_optimizer(params, spec, accelerator.device, model)
        else:
            self.model, self.optimizer = accelerator.prepare(model, make_optimizer(params, spec, accelerator.device,
                                                                                   model))
        self.params = params  # what the optimizer steps and the clipping measures
        self.inner = self.model if self.fsdp else accelerator.unwrap_model(self.model)
        self.strategy = "single" if n == 1 else f"{'fsdp' if self.fsdp else 'ddp'} x{n}"

    def restore(self, path: Path) -> dict:
        if not self.fsdp:
            return load_checkpoint(path, self.inner, self.optimizer)
        saved, weights, per_param = read_checkpoint(path)  # every process reads; each keeps its shard
        check_fits(path, weights, self.model)
        sharding.load_sharded(self.model, self.optimizer, weights, per_param)
        restore_rng(saved)
        return saved

    def save(self, root: Path, step: int, state: dict, keep: int) -> None:
        main = self.accelerator.is_main_process
        if self.fsdp:  # a collective: every process joins, the main one receives whole tensors
            weights = sharding.gather_trainable(self.model)
            per_param = sharding.gather_optimizer(self.model, self.optimizer)
        elif main:
            weights, per_param = local_state(self.inner, self.optimizer)
        if main:
            save_checkpoint(root, step, weights, per_param, state, keep)
        self.accelerator.wait_for_everyone()


def train(
    model: torch.nn.Module,
    plan: BatchPlan,
    spec,
    *,
    eval_plan: Optional[BatchPlan] = None,
    log_row: Callable[[dict], None] = lambda row: None,
    options: LoopOptions = LoopOptions(),
) -> TrainResult:
    """Train the parameters of ``model`` that require grad; see the module docstring. Every log row
    also goes to the trackers ``spec.report_to`` names (``peftlab.train.trackers``)."""
    names = tuple(getattr(spec, "report_to", None) or ())
    tracking = options.tracking or Tracking(options.desc)
    accelerator = make_accelerator(spec, **({"log_with": make_trackers(names, tracking)} if names else {}))
    with tracked(accelerator, tracking, log_row) as log_row:
        return _loop(model, plan, spec, accelerator, eval_plan, log_row, options)


def _loop(model, plan: BatchPlan, spec, accelerator, eval_plan: Optional[BatchPlan], log_row, options: LoopOptions):
    device = accelerator.device
    reset_peak_memory(device)
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    params = [p for p in model.parameters() if p.requires_grad]
    if not is_quantized_model(model):  # a quantized base was placed when it was loaded
        model.to(device)
    if spec.gradient_checkpointing and params:
        # non-reentrant checkpointing needs no input that requires grad (the embeddings are frozen)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not params:
        mem, kind = peak_memory(device)
        eval_loss = evaluate_loss(model, eval_plan, accelerator) if eval_plan else None
        return TrainResult(0, 0.0, 0, 0.0, None, eval_loss, mem, kind, "nothing_to_train",
                           precision=accelerator.mixed_precision)
    torch.manual_seed(spec.seed)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    par = _Parallel(model, params, spec, accelerator)
    model, optimizer, params = par.model, par.optimizer, par.params
    # the speed levers of spec (peftlab.train.fast), under the precision the accelerator resolved
    loss_of = training_loss(model, dataclasses.replace(spec, mixed_precision=accelerator.mixed_precision))
    hooks = step_hooks(par.inner)  # methods' part in each step (AdaLoRA: a regulariser, rank allocation)
    plan.rank, plan.world = accelerator.process_index, accelerator.num_processes

    step, epoch, index, elapsed, tokens, cpu = 0, 0, 0, 0.0, 0, 0.0
    last_loss, eval_loss = None, None
    ckpts = set_aside_damaged(options.checkpoint_dir) if options.checkpoint_dir and options.resume else []
    if options.resume and ckpts:
        saved = par.restore(ckpts[-1])
        step, epoch, index = saved["step"], saved["epoch"], saved["index"]
        elapsed, tokens = saved["elapsed"], saved["tokens"]
        cpu = saved.get("cpu")  # None: a checkpoint from before it was kept (then no cpu_share)
        last_loss = saved.get("last_loss")  # a resume with no step left still reports the final loss

    def checkpoint() -> None:
        if options.checkpoint_dir:
            state = {"epoch": epoch, "index": index, "elapsed": elapsed, "tokens": tokens, "last_loss": last_loss,
                     "cpu": cpu}
            par.save(options.checkpoint_dir, step, state, options.keep_checkpoints)

    def budget_left() -> bool:
        return (spec.max_steps is None or step < spec.max_steps) and (
            spec.max_seconds is None or elapsed < spec.max_seconds
        )

    progress = _progress(spec, step, options)
    model.train()
    window_loss, window_n, window_tokens, window_time = 0.0, 0, 0, 0.0
    batches = plan.iterate(epoch, index)
    t0, c0 = time.perf_counter(), time.process_time()
    skipped = 0
    while budget_left():
        bad = None  # why this step's update must not happen
        for _ in range(spec.grad_accum):
            epoch, index, batch = next(batches)
            index += 1  # position of the *next* batch, what a resume must start from
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with accelerator.accumulate(model), accelerator.autocast():
                loss = loss_of(batch)
                if torch.isfinite(loss):
                    extra = [e for e in (h.extra_loss() for h in hooks) if e is not None]
                    accelerator.backward(loss + sum(extra) if extra else loss)
                    window_loss += float(loss.detach())
                    window_n += 1
                else:  # keep consuming micro-batches so accumulation stays aligned
                    bad = bad or f"non-finite loss {float(loss)} at step {step + 1} (epoch {epoch}, batch {index - 1})"
            n_tok = tokens_in(batch, encoder_decoder)
            window_tokens += n_tok
            tokens += n_tok
        if accelerator.num_processes > 1:  # every rank must skip, or none: they step together
            flag = accelerator.reduce(torch.tensor([float(bad is not None)], device=device), "sum")
            if float(flag) > 0 and bad is None:
                bad = f"non-finite loss on another process at step {step + 1}"
        if bad is None and spec.max_grad_norm:
            norm = accelerator.clip_grad_norm_(params, spec.max_grad_norm)
            if not torch.isfinite(norm) and accelerator.scaler is None:  # fp16: the scaler's case (below)
                bad = f"non-finite gradient norm at step {step + 1} (epoch {epoch}, batch {index - 1})"
        if bad is not None:
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            if skipped > spec.skip_nonfinite:
                kept = list_checkpoints(options.checkpoint_dir) if options.checkpoint_dir else []
                raise TrainingError(f"{bad}; stopped (train.skip_nonfinite={spec.skip_nonfinite}); last good "
                                    f"checkpoint: {kept[-1] if kept else 'none'}")
            log_row({"step": step + 1, "skipped": bad})
            t0, c0 = time.perf_counter(), time.process_time()
            continue
        for g in optimizer.param_groups:
            g["lr"] = spec.lr * g.get("lr_scale", 1.0) * lr_factor(step, elapsed, spec)
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            for hook in hooks:  # after the step, with the gradients still there (AdaLoRA's sensitivities)
                hook.after_step(step, spec.max_steps)
        optimizer.zero_grad(set_to_none=True)
        if accelerator.optimizer_step_was_skipped:  # fp16: the scaled gradients overflowed
            _check_loss_scale(accelerator.scaler, step)
            log_row({"step": step + 1, "skipped": f"fp16 loss scale overflow; scale lowered to "
                                                  f"{accelerator.scaler.get_scale():g}"})
            t0, c0 = time.perf_counter(), time.process_time()
            continue
        step += 1
        now = time.perf_counter()
        elapsed += now - t0
        cpu = cpu + time.process_time() - c0 if cpu is not None else None
        window_time += now - t0
        progress.update(1)
        if step % spec.log_every == 0 or not budget_left():
            if accelerator.num_processes > 1:  # log the global loss and throughput, not rank 0's share
                t = accelerator.reduce(torch.tensor([window_loss, window_n, window_tokens], device=device, dtype=torch.float64), "sum")
                window_loss, window_n, window_tokens = float(t[0]), int(t[1]), int(t[2])
            last_loss = window_loss / max(window_n, 1)
            row = {"step": step, "loss": last_loss, "lr": optimizer.param_groups[0]["lr"],
                   "tokens_per_second": window_tokens / max(window_time, 1e-9), "elapsed": elapsed,
                   "epoch": epoch, "tokens": tokens * accelerator.num_processes}
            progress.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{row['tokens_per_second']:.0f}")
            if eval_plan is not None and spec.eval_every and step % spec.eval_every == 0:
                eval_loss = row["eval_loss"] = evaluate_loss(model, eval_plan, accelerator)
            log_row(row)
            window_loss, window_n, window_tokens, window_time = 0.0, 0, 0, 0.0
        if options.checkpoint_every and step % options.checkpoint_every == 0:
            checkpoint()
        if options.halt_at is not None and step >= options.halt_at:
            checkpoint()
            progress.close()
            mem, kind = peak_memory(device)
            return TrainResult(step, elapsed, tokens, tokens / max(elapsed, 1e-9), last_loss, None, mem, kind, "halted",
                               par.strategy, precision=accelerator.mixed_precision)
        t0, c0 = time.perf_counter(), time.process_time()
    progress.close()
    checkpoint()
    if eval_plan is not None:
        eval_loss = evaluate_loss(model, eval_plan, accelerator)
        log_row({"step": step, "eval_loss": eval_loss})
    mem, kind = peak_memory(device)
    stopped = "max_steps" if spec.max_steps is not None and step >= spec.max_steps else "max_seconds"
    gathered = sharding.gather_trainable(model) if par.fsdp else None
    share = None
    if cpu is not None and elapsed > 0 and device.type == "cpu":
        share = cpu / (elapsed * torch.get_num_threads())
    return TrainResult(step, elapsed, tokens, tokens / max(elapsed, 1e-9), last_loss, eval_loss, mem, kind, stopped,
                       par.strategy, accelerator.mixed_precision, share, gathered)


def _check_loss_scale(scaler, step: int) -> None:
    """fp16 loss scaling skips an update whose scaled gradients overflow and halves the scale (a few
    times at the start is normal). Gradients that overflow even at a vanishing scale are not finite."""
    if scaler.get_scale() < _MIN_LOSS_SCALE:
        raise TrainingError(f"non-finite gradients at step {step + 1} even at fp16 loss scale "
                            f"{scaler.get_scale():g}; set train.mixed_precision: no (or bf16 on a GPU that has it)")


_MIN_LOSS_SCALE = 2.0**-24  # ~40 halvings below GradScaler's initial 2^16


def _progress(spec, start: int, options: LoopOptions):
    from tqdm.auto import tqdm

    return tqdm(total=spec.max_steps, initial=start, desc=options.desc, disable=not options.progress,
                mininterval=1.0, dynamic_ncols=True, unit="step")


def result_dict(result: TrainResult) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in ((f.name, getattr(result, f.name)) for f in fields(result)) if k != "gathered"}


def jsonl_writer(path: Path) -> Callable[[dict], None]:
    """A ``log_row`` that appends one JSON object per line and flushes (readable while running)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(row: dict) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    return write
