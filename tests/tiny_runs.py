"""Helpers for tests that make whole runs: a 5-function dataset and a model of ~150k parameters,
so a run (train, save, score) takes about a second after the first imports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
SAMPLE = ROOT / "tests" / "fixtures" / "codexglue_python_sample.jsonl"
TINY_MODEL = "model.config={d_model: 16, d_kv: 4, d_ff: 32, num_layers: 1, num_decoder_layers: 1, num_heads: 2}"
TINY = [TINY_MODEL, "train.max_steps=2", "train.log_every=1", "train.warmup_steps=0", "data.max_source_length=64",
        "data.max_target_length=16", "data.max_eval_examples=4", "eval.max_examples=3", "eval.max_new_tokens=3"]


def make_data(root: Path) -> Path:
    """``root`` with train/valid/test.jsonl: the 5-function CodeXGLUE sample in each."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        shutil.copy(SAMPLE, root / f"{split}.jsonl")
    return root


def tiny_args(data: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.task.path={data}", *extra]


def train(out: Path, data: Path, *extra: str) -> int:
    from peftlab.lab.cli import main

    return main(["train", SMOKE, "--out", str(out), "--quiet", *tiny_args(data, *extra)])


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes: to show that nothing was lost or changed."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
