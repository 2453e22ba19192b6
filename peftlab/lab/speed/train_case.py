"""Timing a train case: peftlab's training step beside the reference's, interleaved.

Every implementation trains the same model on the same batch, under the same autocast, with AdamW
over its trainable parameters. One step = forward (loss) + backward + optimizer step + zero_grad,
what peft's anchors time. Repetitions alternate the order (A B C, C B A, ...), so a burst of load
from other processes lands on every implementation alike.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from peftlab.lab.speed import build
from peftlab.lab.speed.spec import CaseSpec, SpeedSpec, peftlab_train_spec


@dataclass
class Impl:
    name: str  # "peftlab", "peftlab[variant]", "peft", "peft+compile", "hf", "hf+compile"
    model: nn.Module  # the eager model (for the init-loss check and counting)
    loss_of: Callable[[dict], torch.Tensor]
    optimizer: torch.optim.Optimizer
    compiled: bool = False
    times: list[float] = field(default_factory=list)
    error: Optional[str] = None


def impl_names(case: CaseSpec) -> list[str]:
    names = ["peftlab"] + [f"peftlab[{v}]" for v in case.variants]
    if case.reference != "none":
        ref = "peft" if case.reference == "peft" else "hf"
        names += [ref] + ([f"{ref}+compile"] if case.compile_reference else [])
    return names


def _mixed(precision: str) -> str:
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def build_impl(name: str, base: build.Base, case: CaseSpec, precision: str, lr: float, device, copy: bool = True) -> Impl:
    """One implementation on ``base`` (``copy``: see ``build.make_peftlab``)."""
    if name.startswith("peftlab"):
        from peftlab.train.fast import training_loss
        from peftlab.train.loop import make_optimizer

        spec = peftlab_train_spec({**_options(case, name), "mixed_precision": _mixed(precision), "lr": lr})
        model = build.make_peftlab(base.model, case, base.family, copy=copy)
        params = [p for p in model.parameters() if p.requires_grad]
        return Impl(name, model, training_loss(model, spec), make_optimizer(params, spec, device), spec.compile)
    compiled = name.endswith("+compile")
    model = build.make_reference(base.model, case, copy=copy)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, fused=device.type == "cuda")
    forward = torch.compile(model) if compiled else model
    return Impl(name, model, lambda batch: forward(**batch).loss, optimizer, compiled)


def step(impl: Impl, batch: dict, device: torch.device, dtype) -> torch.Tensor:
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = impl.loss_of(batch)
    loss.backward()
    impl.optimizer.step()
    impl.optimizer.zero_grad(set_to_none=True)
    return loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def init_loss(model: nn.Module, batch: dict, device, dtype) -> float:
    """Eval-mode loss before training: implementations with copied weights must agree."""
    was = model.training
    model.eval()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = float(model(**batch).loss)
    model.train(was)
    return loss


def time_case(spec: SpeedSpec, case: CaseSpec, precision: str, device: torch.device, log=print) -> list[dict]:
    """Build every implementation of ``case``, check they agree, time them interleaved."""
    base = build.build_base(spec.model_of(case), device)
    batch = build.make_batch(spec.batch_of(case), base.model.config, device)
    dtype = build.autocast_dtype(precision)
    impls = []
    for name in impl_names(case):
        impls.append(build_impl(name, base, case, precision, spec.lr, device))
    del base
    ours = impls[0].model
    if not any(m.trains_base for m in case.methods):
        build.perturb_zero_adapters(ours)
    # the references first: aligning with peft may change ours (LLaMA-Adapter's per-head gates made
    # equal per layer), and peftlab's variants must then get those same values
    copied = {i.name: build.align_adapters(ours, i.model)
              for i in sorted(impls[1:], key=lambda i: i.name.startswith("peftlab"))}
    losses = {i.name: init_loss(i.model, batch, device, dtype) for i in impls if not i.compiled}
    for impl in impls:
        impl.model.train()
        t0 = time.perf_counter()
        try:
            for _ in range(spec.warmup):
                step(impl, batch, device, dtype)
            _sync(device)
        except Exception as e:  # a reference that does not compile is reported, not fatal
            if impl.name.startswith("peftlab") and not impl.compiled:
                raise
            impl.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        log(f"  {case.name} {precision} {impl.name}: warm-up {time.perf_counter() - t0:.1f}s"
            + (f"  FAILED {impl.error}" if impl.error else ""))
    live = [i for i in impls if i.error is None]
    for r in range(spec.reps):
        for impl in live if r % 2 == 0 else live[::-1]:
            _sync(device)
            t = time.perf_counter()
            step(impl, batch, device, dtype)
            _sync(device)
            impl.times.append(time.perf_counter() - t)
    tokens = spec.batch_of(case).tokens()
    rows = []
    for impl in impls:
        row = {"case": case.name, "precision": precision, "impl": impl.name, "batch": spec.batch_of(case).label(),
               "tokens_per_step": tokens, "trainable_params": build.trainable(impl.model),
               "init_loss": losses.get(impl.name), "adapters_copied": copied.get(impl.name), "error": impl.error,
               "options": _options(case, impl.name)}
        if impl.times:
            ts = sorted(impl.times)
            med = statistics.median(ts)
            row.update(step_s_median=med, step_s_min=ts[0], step_s_max=ts[-1],
                       step_s_q1=_quantile(ts, 0.25), step_s_q3=_quantile(ts, 0.75), step_s_all=impl.times,
                       tokens_per_s=tokens / med)
        rows.append(row)
    return rows


def _options(case: CaseSpec, name: str) -> dict:
    """The TrainSpec fields peftlab ran with (beyond the defaults), or the reference's compile flag."""
    if not name.startswith("peftlab"):
        return {"compile": name.endswith("+compile")}
    return {**case.train, **(case.variants[name[len("peftlab["):-1]] if name != "peftlab" else {})}


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=4, method="inclusive")[int(q * 4) - 1]
