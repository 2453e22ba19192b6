"""Data parallelism on CPU: 2 processes (gloo) give the same training as 1 process with the same
global batch (gradient accumulation), and only the main process writes the run directory."""

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
SMOKE = str(ROOT / "configs" / "smoke.yaml")
ARGS = ["train.max_steps=4", "train.log_every=1", "train.batch_size=4", "data.max_train_examples=64",
        "data.max_eval_examples=4", "eval.max_examples=4", "eval.max_new_tokens=4", "data.max_source_length=64",
        "methods.0.dropout=0.0",
        "train.mixed_precision=no"]  # fp32: one process and two must agree to 1e-5 whether or not this CPU has bf16


def test_two_gloo_processes_equal_one_process_with_accumulation(tmp_path):
    from safetensors.torch import load_file

    single = tmp_path / "single"
    assert main(["train", SMOKE, "--out", str(single), "--quiet", *ARGS, "train.grad_accum=2"]) == 0
    ddp = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29611",
         "-m", "peftlab", "train", SMOKE, "--out", str(ddp), "--quiet", *ARGS],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((ddp / "status.json").read_text())["state"] == "complete"

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]

    assert len(losses(ddp)) == 4 and losses(ddp) == pytest.approx(losses(single), rel=1e-5)
    a = load_file(single / "adapter" / "peftlab_adapter.safetensors")
    b = load_file(ddp / "adapter" / "peftlab_adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    m = json.loads((ddp / "metrics.json").read_text())
    assert m["strategy"] == "ddp x2"
    assert m["steps"] == 4 and m["trainable_params"] == sum(v.numel() for v in b.values())


def _torchrun(args, port, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         "-m", "peftlab", *args], env=env, capture_output=True, text=True, timeout=600,
    )


def _kill_all(marker: str) -> None:
    for proc_dir in Path("/proc").iterdir():
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if proc_dir.name.isdigit() and marker in cmdline and int(proc_dir.name) != os.getpid():
                os.kill(int(proc_dir.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def _losses(run):
    return [json.loads(x)["loss"] for x in (run / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.mark.parametrize("method", ["lora+align", "full"])
def test_fsdp_two_processes_equal_one_process_and_save_whole_adapters(tmp_path, method):
    """FSDP shards every tensor; the saved adapter must be the whole one (accelerate PR #4206)."""
    from safetensors.torch import load_file

    extra = [] if method == "lora+align" else ["methods=[{name: full}]"]
    # FSDP's sharded output layer keeps the model's own loss (loss_chunk: auto); so does the single
    # process here, or full fine-tuning's AdamW would amplify the two losses' float32 noise
    extra.append("train.loss_chunk=null")
    single = tmp_path / "single"
    assert main(["train", SMOKE, "--out", str(single), "--quiet", *ARGS, *extra, "train.grad_accum=2"]) == 0
    fsdp = tmp_path / "fsdp"
    if method == "full":  # peftlab's own switch, under torchrun
        out = _torchrun(["train", SMOKE, "--out", str(fsdp), "--quiet", *ARGS, *extra, "train.strategy=fsdp"], 29612)
    else:  # accelerate's launcher and flag
        out = subprocess.run(
            [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
             "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
             "--main_process_port", "29616", "-m", "peftlab", "train", SMOKE, "--out", str(fsdp), "--quiet",
             *ARGS, *extra], env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _losses(fsdp) == pytest.approx(_losses(single), rel=1e-4)
    a = load_file(single / "adapter" / "peftlab_adapter.safetensors")
    b = load_file(fsdp / "adapter" / "peftlab_adapter.safetensors")
    assert a.keys() == b.keys()
    for k in a:  # whole tensors, not one process's shard
        assert a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=1e-5), k
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (single, fsdp))
    assert (ma["strategy"], mb["strategy"]) == ("single", "fsdp x2")
    assert mb["trainable_params"] == ma["trainable_params"]
    assert mb["codexglue_bleu"] == pytest.approx(ma["codexglue_bleu"], abs=1e-6)


def test_fsdp_checkpoints_are_whole_and_resume(tmp_path):
    """A sharded run's checkpoint holds whole tensors and optimizer moments; resuming it under
    FSDP continues the loss curve of an uninterrupted run."""
    from safetensors.torch import load_file

    args = [*ARGS, "train.max_steps=16", "train.checkpoint_every=3", "train.strategy=fsdp"]
    full = tmp_path / "full"
    assert _torchrun(["train", SMOKE, "--out", str(full), "--quiet", *args], 29613).returncode == 0
    ckpt = full / "checkpoints" / "step-00000003"
    if not ckpt.exists():  # keep_checkpoints may have pruned it; the final one is enough
        ckpt = sorted((full / "checkpoints").iterdir())[-1]
    weights = load_file(ckpt / "trainable.safetensors")
    moments = load_file(ckpt / "optimizer.safetensors")
    single = load_file(full / "adapter" / "peftlab_adapter.safetensors")
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in single.items()}
    assert {k.split("::")[0] for k in moments} == set(weights)

    part = tmp_path / "part"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29614",
           "-m", "peftlab", "train", SMOKE, "--out", str(part), "--quiet", *args]
    proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if (part / "train_log.jsonl").exists() and len(_losses(part)) >= 4:
                break
            time.sleep(0.05)
        _kill_all(str(part))  # the launcher and every worker (they run in sessions of their own)
    finally:
        proc.wait()
    time.sleep(0.5)
    assert json.loads((part / "status.json").read_text())["state"] == "running", "finished before the kill"
    last_logged = len(_losses(part))
    out = _torchrun(["train", "--resume", str(part), "--quiet"], 29615)
    assert out.returncode == 0, [ln for ln in out.stderr.splitlines() if "error" in ln.lower()][:5]
    resumed_from = json.loads((part / "status.json").read_text())["resumed_from_step"]
    assert resumed_from >= 3 and last_logged - resumed_from <= 3  # at most one interval lost
    assert _losses(part) == pytest.approx(_losses(full), rel=1e-4)
