"""Crash safety: a training run killed with SIGKILL resumes from its last checkpoint and follows
the same loss curve as an uninterrupted run, losing at most one checkpoint interval of work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftlab.lab.cli import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
ARGS = ["train.max_steps=12", "train.log_every=1", "train.checkpoint_every=3", "data.max_train_examples=96",
        "data.max_eval_examples=4", "eval.max_examples=4", "eval.max_new_tokens=4", "data.max_source_length=64"]


def losses(run):
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    assert main(["train", SMOKE, "--out", str(full), "--quiet", *ARGS]) == 0

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "peftlab", "train", SMOKE, "--out", str(killed), "--quiet",
                             *ARGS], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            done = losses(killed) if (killed / "train_log.jsonl").exists() else {}
            if max(done, default=0) >= 7:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    last_logged = max(losses(killed))
    assert json.loads((killed / "status.json").read_text())["state"] == "running"  # not mistaken for done
    assert main(["eval", str(killed)]) == 2

    assert main(["train", "--resume", str(killed), "--quiet"]) == 0
    status = json.loads((killed / "status.json").read_text())
    assert status["state"] == "complete"
    assert last_logged - status["resumed_from_step"] <= 3  # at most one checkpoint interval lost
    a, b = losses(full), losses(killed)
    assert sorted(b) == list(range(1, 13))
    assert [b[s] for s in range(1, 13)] == pytest.approx([a[s] for s in range(1, 13)], rel=1e-4)
    m_full, m_killed = (json.loads((r / "metrics.json").read_text()) for r in (full, killed))
    assert m_killed["final_loss"] == pytest.approx(m_full["final_loss"], rel=1e-4)


def test_resume_refuses_finished_and_foreign_dirs(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train", SMOKE, "--resume", str(tmp_path)]) == 2
    assert "takes no config" in capsys.readouterr().err
