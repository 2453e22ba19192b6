"""Timing a train case: peftlab's training step beside the reference's, interleaved.

Every implementation (``peftlab.lab.speed.impls``) trains the same model on the same batch, under
the same autocast, with AdamW over its trainable parameters. One step = forward (loss) + backward +
optimizer step + zero_grad, what peft's anchors time; ``peftlab.lab.speed.timing`` warms them up and
times them interleaved.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from peftlab.lab.speed import build, timing
from peftlab.lab.speed.impls import Impl, build_impl, impl_names, options_of, share_weights
from peftlab.lab.speed.spec import CaseSpec, SpeedSpec


def step(impl: Impl, batch: dict, device: torch.device, dtype) -> torch.Tensor:
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = impl.loss_of(impl.batch(batch))
    loss.backward()
    impl.optimizer.step()
    impl.optimizer.zero_grad(set_to_none=True)
    return loss


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
    impls = [build_impl(name, base, case, precision, spec.lr, device) for name in impl_names(case)]
    del base
    copied = share_weights(impls)
    losses = {i.name: init_loss(i.model, i.batch(batch), device, dtype) for i in impls if not i.compiled}
    for impl in impls:
        impl.model.train()
    calls = {i.name: functools.partial(step, i, batch, device, dtype) for i in impls}
    compiled = {i.name for i in impls if i.compiled}
    # a reference that does not compile (or compiled peftlab) is reported, not fatal
    _, errors = timing.warm_up(calls, spec.warmup_of(case), device, log=log, label=f"{case.name} {precision} ",
                               may_fail=lambda name: not name.startswith("peftlab") or name in compiled)
    times = timing.interleave({n: c for n, c in calls.items() if n not in errors}, spec.reps_of(case), device)
    tokens = spec.batch_of(case).tokens()
    rows = []
    for impl in impls:
        row = {"case": case.name, "precision": precision, "impl": impl.name, "batch": spec.batch_of(case).label(),
               "tokens_per_step": tokens, "trainable_params": build.trainable(impl.model),
               "init_loss": losses.get(impl.name), "adapters_copied": copied.get(impl.name),
               "error": errors.get(impl.name), "options": options_of(case, impl.name)}
        if times.get(impl.name):
            row.update(timing.summary(times[impl.name], "step_s"))
            row["tokens_per_s"] = tokens / row["step_s_median"]
        rows.append(row)
    return rows
