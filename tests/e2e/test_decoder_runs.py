"""What T5 runs have, on a decoder (the tiny random LLaMA of ``configs/smoke-llama.yaml``):
a SIGKILLed run resumes on the same loss curve; 2 CPU processes (DDP, FSDP) train exactly as
1 process with gradient accumulation; a 4-bit (QLoRA) base trains with gradient checkpointing and
merges into its full-precision base.

The multi-process tests use ports 29671-29674 (``test_distributed.py`` has 29611-29616)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from peftlab.lab.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke-llama.yaml")
# fp32 pinned: these compare arithmetic across process layouts (bf16 autocast would blur it)
ARGS = ["train.log_every=1", "train.batch_size=4", "data.max_train_examples=64", "data.max_eval_examples=4",
        "eval.max_examples=3", "eval.max_new_tokens=4", "data.max_source_length=64", "data.max_target_length=16",
        "train.mixed_precision=no"]


def _losses(run):
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _torchrun(args, port):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         "-m", "peftlab", *args], env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=600)


def test_sigkill_then_resume_matches_an_uninterrupted_decoder_run(tmp_path):
    args = [*ARGS, "train.max_steps=12", "train.checkpoint_every=3"]
    full = tmp_path / "full"
    assert main(["train", SMOKE, "--out", str(full), "--quiet", *args]) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "peftlab", "train", SMOKE, "--out", str(killed), "--quiet",
                             *args], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if (killed / "train_log.jsonl").exists() and max(_losses(killed), default=0) >= 7:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    last_logged = max(_losses(killed))
    assert json.loads((killed / "status.json").read_text())["state"] == "running"

    assert main(["train", "--resume", str(killed), "--quiet"]) == 0
    status = json.loads((killed / "status.json").read_text())
    assert status["state"] == "complete" and last_logged - status["resumed_from_step"] <= 3
    a, b = _losses(full), _losses(killed)
    assert sorted(b) == list(range(1, 13))
    assert [b[s] for s in range(1, 13)] == pytest.approx([a[s] for s in range(1, 13)], rel=1e-4)


@pytest.mark.parametrize("strategy, port", [("auto", 29671), ("fsdp", 29672)], ids=["ddp", "fsdp"])
def test_two_processes_equal_one_process_with_accumulation(tmp_path, strategy, port):
    from safetensors.torch import load_file

    args = [*ARGS, "train.max_steps=4"]
    single = tmp_path / "single"
    assert main(["train", SMOKE, "--out", str(single), "--quiet", *args, "train.grad_accum=2"]) == 0
    multi = tmp_path / strategy
    out = _torchrun(["train", SMOKE, "--out", str(multi), "--quiet", *args, f"train.strategy={strategy}"], port)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = _losses(single), _losses(multi)
    assert len(b) == 4 and list(b.values()) == pytest.approx(list(a.values()), rel=1e-4)
    wa = load_file(single / "adapter" / "peftlab_adapter.safetensors")
    wb = load_file(multi / "adapter" / "peftlab_adapter.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:  # whole tensors, not one process's shard
        assert wa[k].shape == wb[k].shape and torch.allclose(wa[k], wb[k], atol=1e-5), k
    m = json.loads((multi / "metrics.json").read_text())
    assert m["strategy"] == ("ddp x2" if strategy == "auto" else "fsdp x2") and m["steps"] == 4


def test_qlora_decoder_run_then_merge_into_the_full_precision_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    import dataclasses

    from transformers import AutoModelForCausalLM

    from peftlab.methods.io import load_adapter
    from peftlab.models.loading import load_model
    from peftlab.lab.run import base_model_record, load_run_config

    run = tmp_path / "run"
    args = [*ARGS, "model.quantize=4bit", "train.gradient_checkpointing=true", "train.max_steps=3",
            "methods=[{name: lora, r: 8, targets: [q, k, v, o]}]"]
    assert main(["train", SMOKE, "--out", str(run), "--quiet", *args]) == 0
    m = json.loads((run / "metrics.json").read_text())
    losses = _losses(run)
    assert m["steps"] == 3 and len(losses) == 3 and all(v == v for v in losses.values())
    # a 4-bit base counts its logical weights: 2 layers x r=8 x (q: 64+64, k: 64+32, v: 64+32, o: 64+64)
    assert m["trainable_params"] == 2 * 8 * (128 + 96 + 96 + 128) and m["total_params"] > 1_000_000

    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    cfg = load_run_config(run)
    ref = load_model(dataclasses.replace(cfg.model, quantize="none"), seed=cfg.train.seed).model.eval()
    load_adapter(ref, run / "adapter", base_model_record(cfg))
    ids = torch.randint(5, 500, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-4, rtol=0)
