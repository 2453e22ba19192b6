"""Data parallelism on CPU: 2 processes (gloo) give the same training as 1 process with the same
global batch (gradient accumulation), and only the main process writes the run directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
ARGS = ["train.max_steps=4", "train.log_every=1", "train.batch_size=4", "data.max_train_examples=64",
        "data.max_eval_examples=4", "eval.max_examples=4", "eval.max_new_tokens=4", "data.max_source_length=64",
        "methods.0.dropout=0.0"]


def test_two_gloo_processes_equal_one_process_with_accumulation(tmp_path):
    from safetensors.torch import load_file

    single = tmp_path / "single"
    assert main(["train", SMOKE, "--out", str(single), "--quiet", *ARGS, "train.grad_accum=2"]) == 0
    ddp = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29611",
         "-m", "peftlab.cli", "train", SMOKE, "--out", str(ddp), "--quiet", *ARGS],
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
    assert m["steps"] == 4 and m["trainable_params"] == sum(v.numel() for v in b.values())
