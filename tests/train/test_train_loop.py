"""The train loop: schedule, budgets, accumulation, determinism, checkpoints, numerical faults."""

import json

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from peftlab.data.seq2seq import BatchPlan, Encoded, collate, encode_pairs
from peftlab.methods import apply_methods
from peftlab.methods.lora import LoraConfig
from peftlab.models.t5 import T5
from peftlab.schema import TrainSpec
from peftlab.train.checkpoint import list_checkpoints
from peftlab.train.loop import LoopOptions, TrainingError, jsonl_writer, train
from peftlab.train.optim import lr_factor


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=64, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **T5.tiny_config)
    model = T5ForConditionalGeneration(cfg)
    apply_methods(model, [LoraConfig(r=4, alpha=8)])
    return model


def tiny_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = [torch.randint(2, 64, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist() + [1] for _ in range(n)]
    tgt = [torch.randint(2, 64, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist() + [1] for _ in range(n)]
    return Encoded(src, tgt)


def spec(**kw):
    # fp32 unless a test asks otherwise: exact comparisons must not depend on whether this CPU has bf16
    base = dict(max_steps=6, batch_size=4, lr=1e-2, log_every=1, seed=0, device="cpu", mixed_precision="no")
    return TrainSpec(**{**base, **kw})


def run(tmp_path, name, model=None, s=None, **opts):
    rows = []
    model = model or tiny_model()
    res = train(model, BatchPlan(tiny_data(), (s or spec()).batch_size, 0, seed=0), s or spec(),
                log_row=rows.append, options=LoopOptions(progress=False, **opts))
    return model, res, rows


def test_lr_schedule_warmup_then_linear_decay():
    s = TrainSpec(max_steps=10, warmup_steps=2)
    assert [round(lr_factor(i, 0, s), 3) for i in range(11)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]
    t = TrainSpec(max_steps=None, max_seconds=100.0)
    assert lr_factor(0, 25.0, t) == pytest.approx(0.75)


def test_collate_pads_and_masks():
    b = collate([[5, 6, 1], [7, 1]], [[8, 1], [9, 9, 1]], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 1], [7, 1, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["labels"].tolist() == [[8, 1, -100], [9, 9, 1]]


def test_batch_plan_is_deterministic_sharded_and_resumable():
    data = tiny_data(40)
    plan = BatchPlan(data, 4, 0, seed=3)
    assert plan.epoch_batches(0) == BatchPlan(data, 4, 0, seed=3).epoch_batches(0)
    assert plan.epoch_batches(0) != plan.epoch_batches(1)
    assert sorted(i for b in plan.epoch_batches(0) for i in b) == list(range(40))
    it = plan.iterate(0, 0)
    seq = [next(it)[2]["input_ids"] for _ in range(13)]
    it2 = plan.iterate(1, 2)  # 10 batches per epoch: position (1, 2) is the 13th batch
    assert torch.equal(next(it2)[2]["input_ids"], seq[12])
    r0, r1 = (BatchPlan(data, 4, 0, seed=3, rank=r, world=2).epoch_batches(0) for r in (0, 1))
    assert not set(map(tuple, r0)) & set(map(tuple, r1)) and len(r0) == len(r1) == 5


def test_encode_counts_truncation(caplog):
    caplog.set_level("INFO", logger="peftlab.data.seq2seq")
    class Tok:
        eos_token_id = 1
        bos_token_id = None

        def __call__(self, texts, add_special_tokens=True, verbose=False):
            return {"input_ids": [[5] * len(t) for t in texts]}

    enc = encode_pairs(Tok(), ["aaaaaaaaaa", "bb"], ["c", "dddddd"], max_source=8, max_target=4)
    assert enc.input_ids[0] == [5] * 7 + [1] and enc.input_ids[1] == [5, 5, 1]
    assert enc.truncated_sources == 1 and enc.truncated_targets == 1 and enc.longest_source == 11
    assert "truncated 1 of 2 sources to 8 tokens (longest 11)" in caplog.text


def test_training_reduces_loss_and_is_deterministic(tmp_path):
    m1, r1, rows1 = run(tmp_path, "a", s=spec(max_steps=15))
    m2, r2, rows2 = run(tmp_path, "b", s=spec(max_steps=15))
    assert r1.steps == 15 and r1.stopped_by == "max_steps" and r1.tokens > 0
    assert 0 < r1.cpu_share < 2  # the process's CPU time over the steps / (wall time x threads)
    assert rows1[-1]["loss"] < rows1[0]["loss"]
    assert [r["loss"] for r in rows1] == [r["loss"] for r in rows2]


def test_wall_clock_budget_stops_training():
    _, res, _ = run(None, "t", s=spec(max_steps=None, max_seconds=0.5))
    assert res.stopped_by == "max_seconds" and res.train_seconds >= 0.5 and res.steps >= 1


def test_gradient_accumulation_matches_a_bigger_batch():
    g = torch.Generator().manual_seed(1)  # equal lengths: mean of micro-batch means == batch mean
    data = Encoded([torch.randint(2, 64, (9,), generator=g).tolist() + [1] for _ in range(8)],
                   [torch.randint(2, 64, (4,), generator=g).tolist() + [1] for _ in range(8)])

    def one_step(batch_size, accum):
        model = tiny_model()
        plan = BatchPlan(data, batch_size, 0, seed=0, bucket=1)
        # the same 8 rows: 2 micro-batches of 4 == 1 batch of 8
        train(model, plan, spec(max_steps=1, batch_size=batch_size, grad_accum=accum, max_grad_norm=None),
              options=LoopOptions(progress=False))
        return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])

    a, b = one_step(8, 1), one_step(4, 2)
    assert (a - b).abs().max() < 1e-5


def test_checkpoints_are_atomic_pruned_and_resume_exactly(tmp_path):
    ck = tmp_path / "ck"
    _, full, rows_full = run(tmp_path, "f", s=spec(max_steps=8), checkpoint_dir=tmp_path / "ck_full", checkpoint_every=2)
    m, part, _ = run(tmp_path, "p", s=spec(max_steps=8), checkpoint_dir=ck, checkpoint_every=2, halt_at=5)
    assert part.stopped_by == "halted" and [p.name for p in list_checkpoints(ck)] == ["step-00000004", "step-00000005"]
    assert not [p for p in ck.iterdir() if p.name.startswith(".tmp")]
    m2, res, rows = run(tmp_path, "r", s=spec(max_steps=8), checkpoint_dir=ck, checkpoint_every=2, resume=True)
    assert res.steps == 8 and [r["step"] for r in rows] == [6, 7, 8]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in rows_full[5:]], rel=1e-6)
    state = json.loads((list_checkpoints(ck)[-1] / "state.json").read_text())
    assert state["step"] == 8 and "rng" in state
    assert res.cpu_share is not None and state["cpu"] > 0  # CPU time is kept across a resume


def test_non_finite_loss_stops_with_the_step(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.encoder.block[0].layer[0].SelfAttention.q.lora_a.fill_(float("nan"))
        model.encoder.block[0].layer[0].SelfAttention.q.lora_b.fill_(1.0)
    with pytest.raises(TrainingError, match="non-finite loss nan at step 1 .*last good checkpoint: none"):
        run(tmp_path, "n", model=model)


def test_bad_batches_are_skipped_up_to_a_limit(tmp_path):
    """A batch containing token 63 poisons the loss; with skip_nonfinite the run skips those steps."""
    model = tiny_model()

    def poison(module, args, kwargs, output):
        if (kwargs["input_ids"] == 63).any():
            output.last_hidden_state = output.last_hidden_state * float("nan")
        return output

    model.encoder.register_forward_hook(poison, with_kwargs=True)
    data = tiny_data(24)
    n_bad = sum(63 in x for x in data.input_ids)
    assert n_bad > 0
    rows = []
    res = train(model, BatchPlan(data, 4, 0), spec(max_steps=6, skip_nonfinite=50), log_row=rows.append,
                options=LoopOptions(progress=False))
    skipped = [r for r in rows if "skipped" in r]
    assert res.steps == 6 and skipped and all("non-finite" in r["skipped"] for r in skipped)
    with pytest.raises(TrainingError, match="skip_nonfinite=0"):
        train(model, BatchPlan(data, 4, 0), spec(max_steps=6), options=LoopOptions(progress=False))


def test_nothing_to_train_is_zero_shot():
    model = tiny_model()
    model.requires_grad_(False)
    res = train(model, BatchPlan(tiny_data(), 4, 0), spec(), options=LoopOptions(progress=False))
    assert res.steps == 0 and res.stopped_by == "nothing_to_train"


def test_jsonl_writer_appends(tmp_path):
    w = jsonl_writer(tmp_path / "log.jsonl")
    w({"a": 1})
    w({"a": 2})
    assert [json.loads(x)["a"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_fp16_on_cpu_is_refused():
    from peftlab.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 autocast needs a GPU"):
        train(tiny_model(), BatchPlan(tiny_data(), 4, 0), spec(mixed_precision="fp16"), options=LoopOptions(progress=False))


def test_bf16_autocast_trains_fp32_adapters():
    model, res, rows = run(None, "bf", s=spec(mixed_precision="bf16", max_steps=3))
    assert res.steps == 3 and all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_gradient_checkpointing_gives_the_same_training():
    _, _, plain = run(None, "p", s=spec(max_steps=3))
    model, _, ckpt = run(None, "c", s=spec(max_steps=3, gradient_checkpointing=True))
    assert model.is_gradient_checkpointing
    assert [r["loss"] for r in ckpt] == pytest.approx([r["loss"] for r in plain], rel=1e-5)


def test_tokens_counted_once_for_decoders():
    from peftlab.data.seq2seq import tokens_in

    batch = {"input_ids": torch.ones(2, 5), "attention_mask": torch.ones(2, 5), "labels": torch.ones(2, 5)}
    assert tokens_in(batch, encoder_decoder=False) == 10 and tokens_in(batch) == 20


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_evaluate_loss_is_the_models_own_loss(kind, t5_batch, llama_batch):
    """Validation/held-out loss = the training loss on the same batch (causal LMs shift by one)."""
    from accelerate import Accelerator

    from conftest import build_llama, build_t5
    from peftlab.train.loop import evaluate_loss

    model = build_t5() if kind == "t5" else build_llama()
    batch = t5_batch if kind == "t5" else llama_batch
    if "labels" not in batch:
        batch = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}

    class OneBatch:
        def epoch_batches(self, epoch):
            return [[0]]

        def make_batch(self, rows, epoch):
            return batch

    with torch.no_grad():
        expected = float(model(**batch).loss)
    assert evaluate_loss(model, OneBatch(), Accelerator(cpu=True)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("native, used", [(False, "no"), (True, "bf16")])
def test_auto_precision_is_resolved_for_the_cpu_and_recorded(monkeypatch, native, used):
    import peftlab.device

    monkeypatch.setattr(peftlab.device, "native_bf16_cpu", lambda: native)
    import peftlab.train.loop

    seen = []
    real = peftlab.train.loop.training_loss
    monkeypatch.setattr(peftlab.train.loop, "training_loss", lambda model, s: seen.append(s) or real(model, s))
    _, res, _ = run(None, "auto", s=spec(mixed_precision="auto", max_steps=1, cast_frozen=True))
    assert res.precision == used and res.steps == 1
    # the levers see the precision resolved (cast_frozen acts under bf16, never under "auto")
    assert [s.mixed_precision for s in seen] == [used]


def test_forced_bf16_on_a_cpu_without_it_runs_with_one_warning(monkeypatch, caplog):
    import logging

    import peftlab.device

    monkeypatch.setattr(peftlab.device, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(peftlab.device, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="peftlab.device"):
        for _ in range(2):  # a bench: several runs in one process, one warning
            _, res, _ = run(None, "bf", s=spec(mixed_precision="bf16", max_steps=1))
            assert res.precision == "bf16" and res.steps == 1
    assert len([r for r in caplog.records if "without native bf16" in r.getMessage()]) == 1


def _with_loss_scaler(monkeypatch, init_scale):
    """The loop as on a GPU without bf16 (fp16 + accelerate's GradScaler), on CPU: the scaler is the
    part under test (fp16 autocast itself needs a GPU), so attach one to the CPU accelerator."""
    import peftlab.train.loop as loop

    make = loop.make_accelerator

    def with_scaler(s):
        accelerator = make(s)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        return accelerator

    monkeypatch.setattr(loop, "make_accelerator", with_scaler)


def _overflowing(model, times):
    """Make the first ``times`` backward passes overflow (inf gradients), as fp16's do at first."""
    p = next(p for p in model.parameters() if p.requires_grad)
    calls = []
    p.register_hook(lambda g: (calls.append(1), g * float("inf") if len(calls) <= times else g)[1])
    return model


@pytest.mark.parametrize("clip", [None, 1.0])
def test_fp16_loss_scale_overflow_skips_the_update_not_the_run(monkeypatch, clip):
    _with_loss_scaler(monkeypatch, init_scale=1.0)
    model = _overflowing(tiny_model(), times=2)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    model, res, rows = run(None, "fp16", model=model, s=spec(max_steps=3, max_grad_norm=clip))
    assert [r["skipped"] for r in rows if "skipped" in r] == [
        "fp16 loss scale overflow; scale lowered to 0.5", "fp16 loss scale overflow; scale lowered to 0.25"]
    assert res.steps == 3 and [r["step"] for r in rows if "loss" in r] == [1, 2, 3]  # overflows are not steps
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(torch.isfinite(a).all() for a in after) and any(not torch.equal(a, b) for a, b in zip(after, before))


def test_fp16_gradients_that_overflow_at_any_scale_stop_the_run(monkeypatch):
    _with_loss_scaler(monkeypatch, init_scale=1.0)
    with pytest.raises(TrainingError, match="even at fp16 loss scale"):
        run(None, "inf", model=_overflowing(tiny_model(), times=10**6), s=spec(max_steps=3))
