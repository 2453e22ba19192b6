"""The loop's method hooks: per-step callbacks and extra loss terms (``StepHook``, AdaLoRA's), and LoRA+'s
per-group learning rates (``train.loraplus_ratio``), through ``train`` itself on a tiny T5."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from peftlab.data.seq2seq import BatchPlan
from peftlab.errors import ConfigError
from peftlab.methods import MethodConfig, apply_methods
from peftlab.methods.adalora import AdaLoraConfig, SVDLinear
from peftlab.methods.base import StepHook
from peftlab.methods.ia3 import IA3Config
from peftlab.methods.lora import LoraConfig, LoraLinear
from peftlab.schema import TrainSpec
from peftlab.train.loop import LoopOptions, train
from peftlab.train.optim import make_optimizer

from test_train_loop import spec, tiny_data


def tiny_t5(methods, seed=0):
    from transformers import T5Config, T5ForConditionalGeneration

    from peftlab.models.t5 import T5

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=64, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **T5.tiny_config)
    model = T5ForConditionalGeneration(cfg)
    apply_methods(model, methods)
    return model


def run(model, s, rows=None):
    log = rows if rows is not None else []
    return train(model, BatchPlan(tiny_data(), s.batch_size, 0, seed=0), s, log_row=log.append,
                 options=LoopOptions(progress=False))


class Recorder(StepHook):
    def __init__(self, model):
        self.calls, self.losses = [], 0
        self.b = [m.lora_b for m in model.modules() if isinstance(m, LoraLinear)]

    def extra_loss(self):
        self.losses += 1
        return 1e3 * sum((b ** 2).sum() for b in self.b)  # a heavy L2 on B: it must reach the gradient

    def after_step(self, step, total_steps):
        assert all(b.grad is not None for b in self.b), "the gradients were cleared before the hook"
        self.calls.append((step, total_steps))


@dataclass(frozen=True)
class Recording(MethodConfig):
    """A method with no modules of its own whose step hook records what the loop calls."""

    name = "recording"

    def apply(self, model, family):
        return []

    def step_hook(self, model):
        hook = Recorder(model)
        model.__dict__.setdefault("recorders", []).append(hook)
        return hook


def test_the_loop_calls_each_hook_after_every_step_and_adds_its_loss():
    model = tiny_t5([LoraConfig(r=2), Recording()])
    plain = tiny_t5([LoraConfig(r=2)])
    s = spec(max_steps=4, grad_accum=2)
    rows, plain_rows = [], []
    run(model, s, rows)
    run(plain, s, plain_rows)
    (hook,) = model.recorders
    assert hook.calls == [(i, 4) for i in range(4)]  # 0-based step just taken, the run's max_steps
    assert hook.losses == 8  # once per micro-batch
    b = torch.cat([m.lora_b.flatten() for m in model.modules() if isinstance(m, LoraLinear)])
    b_plain = torch.cat([m.lora_b.flatten() for m in plain.modules() if isinstance(m, LoraLinear)])
    assert b.abs().mean() < b_plain.abs().mean() / 2  # the extra loss pulled B towards 0
    # the log keeps the task's loss (the same first step as without the extra term)
    assert rows[0]["loss"] == pytest.approx(plain_rows[0]["loss"], rel=1e-6)


def test_adalora_reaches_its_target_budget_through_the_loop():
    model = tiny_t5([AdaLoraConfig(r=4, target_r=2, targets=("q", "v"), tinit=1, tfinal=2)])
    run(model, spec(max_steps=8))
    layers = [m for m in model.modules() if isinstance(m, SVDLinear)]
    kept = [int((m.lora_e != 0).sum()) for m in layers]
    assert sum(kept) == 2 * len(layers)  # target_r per layer on average, spent where the scores say


def test_adalora_needs_a_step_budget():
    model = tiny_t5([AdaLoraConfig(r=4, target_r=2, targets=("q",))])
    with pytest.raises(ConfigError, match="total_step, or train.max_steps"):
        run(model, spec(max_steps=None, max_seconds=5.0))
    model = tiny_t5([AdaLoraConfig(r=4, target_r=2, targets=("q",), tinit=3, tfinal=3)])
    with pytest.raises(ConfigError, match="tinit"):
        run(model, spec(max_steps=6))


def test_loraplus_steps_b_at_ratio_times_the_rate():
    """Adam's first step moves each entry by about lr (its update is g / |g|): B's by 16 lr, A's by lr."""
    model = tiny_t5([LoraConfig(r=2)])
    with torch.no_grad():  # B != 0, so that A has a gradient at the first step too
        for m in model.modules():
            if isinstance(m, LoraLinear):
                m.lora_b.normal_(std=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    lr = 1e-3
    run(model, spec(max_steps=1, lr=lr, loraplus_ratio=16.0, max_grad_norm=None))
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters() if n in before}
    assert all(v == pytest.approx(16 * lr, rel=0.02) for n, v in moved.items() if n.endswith("lora_b"))
    assert all(v == pytest.approx(lr, rel=0.02) for n, v in moved.items() if n.endswith("lora_a"))


def test_loraplus_groups_come_from_the_modules_not_names():
    model = tiny_t5([LoraConfig(r=2, targets=("q",)), IA3Config(targets=("k", "v"), feedforward=())])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, TrainSpec(lr=1e-3, loraplus_ratio=4.0), torch.device("cpu"), model)
    fast = {id(p) for g in opt.param_groups if g["lr_scale"] == 4.0 for p in g["params"]}
    declared = {id(m.lora_b) for m in model.modules() if isinstance(m, LoraLinear)}
    assert fast == declared
    assert opt.param_groups[0]["lr"] == 1e-3  # the first group is the base rate's (the log reads it)
    ia3 = tiny_t5([IA3Config()])
    with pytest.raises(ConfigError, match="train.loraplus_ratio: 4 asks for LoRA\\+, but none"):
        make_optimizer([p for p in ia3.parameters() if p.requires_grad], TrainSpec(loraplus_ratio=4.0),
                       torch.device("cpu"), ia3)
