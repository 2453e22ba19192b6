"""``train.report_to``: the loop's rows and the run's config reach accelerate's trackers (TensorBoard's
event files written and read back here), ``train_log.jsonl`` stays, a missing tracker package is
refused before any work, no tracker package is imported unless asked, and a bench names each run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tiny_runs import losses, make_data, train

pytest.importorskip("tensorboard")


def _scalars(directory, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_tensorboard_gets_the_log_rows_and_train_log_stays(tmp_path):
    run = tmp_path / "r"
    assert train(run, make_data(tmp_path / "data"), "train.report_to=[tensorboard]", "train.max_steps=3") == 0
    logged = losses(run)  # train_log.jsonl, as before
    assert sorted(logged) == [1, 2, 3]
    events = run / "tensorboard"
    assert any(p.name.startswith("events.out.tfevents") for p in events.iterdir())
    seen = _scalars(events, "loss")
    assert sorted(seen) == [1, 2, 3] and all(abs(seen[s] - logged[s]) < 1e-5 for s in seen)
    assert set(_scalars(events, "lr")) == {1, 2, 3} and set(_scalars(events, "tokens_per_second")) == {1, 2, 3}
    assert _scalars(events, "eval_loss")  # the validation loss at the end
    hparams = list(events.rglob("hparams.yml"))  # the run's config, flattened
    assert hparams and "train.report_to" in hparams[0].read_text() and "methods.0.name: lora" in hparams[0].read_text()


def test_a_tracker_whose_package_is_missing_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    run = tmp_path / "r"
    assert train(run, make_data(tmp_path / "data"), "train.report_to=[mlflow]") == 2
    err = capsys.readouterr().err
    assert "train.report_to: mlflow needs the mlflow package, which is not installed (pip install mlflow)" in err
    assert not (run / "train_log.jsonl").exists()


def test_report_to_is_checked_when_the_config_loads(tmp_path, capsys):
    assert train(tmp_path / "r", make_data(tmp_path / "data"), "train.report_to=[tensorbord]") == 2
    assert "train.report_to.0: expected one of 'tensorboard' | 'wandb' | 'mlflow' | 'trackio'" in capsys.readouterr().err


def test_no_tracker_package_is_imported_unless_asked():
    code = ("import sys, peftlab.lab.cli, peftlab.lab.run, peftlab.train.loop, peftlab.train.trackers\n"
            "from peftlab.train.loop import make_accelerator\nfrom peftlab.schema import TrainSpec\n"
            "make_accelerator(TrainSpec(device='cpu'))\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'tensorboardX', 'wandb', 'mlflow', "
            "'trackio')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_bench_names_each_run_and_gives_its_config(tmp_path, monkeypatch):
    from bench_helpers import write_spec

    import peftlab.train.loop as loop
    from peftlab.lab.bench.run import run_bench
    from peftlab.train import trackers

    seen = []

    def recording(names, tracking):
        seen.append((names, tracking))
        return trackers.make_trackers(names, tracking)

    monkeypatch.setattr(loop, "make_trackers", recording)
    spec = write_spec(tmp_path, methods="  - {label: LoRA, methods: [{name: lora, r: 4}]}\n", seeds="[0]",
                      extra="isolate: false\n", tasks=None)
    spec.write_text(spec.read_text().replace("overrides:\n", "overrides:\n  train.report_to: [tensorboard]\n"))
    out = tmp_path / "bench"
    run_bench(spec, out, progress=False, report=False)
    assert sorted(t.name for _, t in seen) == ["code2doc/lora/seed0", "sentiment/lora/seed0"]
    assert all(names == ("tensorboard",) and t.group == "bench" and t.config["train"]["report_to"] == ["tensorboard"]
               and t.directory == out / t.name for names, t in seen)
    assert (out / "code2doc" / "lora" / "seed0" / "tensorboard").is_dir()
    index = json.loads((out / "bench.json").read_text())
    assert all(r["state"] == "complete" for r in index["runs"])
