"""The command line's habits: ``--version``, ``peftlab list``, help on every argument, ``--overwrite``
for a failed run (set aside, never deleted; a finished run never replaced), every config error at
once."""

from __future__ import annotations

import argparse
import json

import pytest

from peftlab.lab.cli import main
from tiny_runs import SMOKE, make_data, status, tiny_args, train


def test_version(capsys):
    from peftlab import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"peftlab {__version__}"


def _actions(p: argparse.ArgumentParser, where: str):
    for a in p._actions:
        yield where, a
        if isinstance(a, argparse._SubParsersAction):
            for choice in a._choices_actions:
                yield f"{where} {choice.dest}", choice
            for name, sub in a.choices.items():
                yield from _actions(sub, f"{where} {name}")


def test_every_argument_of_every_subcommand_has_help():
    from peftlab.lab.cli_args import parser

    bare = [f"{where}: {a.dest} {a.option_strings}" for where, a in _actions(parser(), "peftlab")
            if not a.help or a.help == argparse.SUPPRESS]
    assert not bare, bare


@pytest.mark.parametrize("what, names", [
    ("methods", ("lora", "ia3", "prompt_tuning", "full", "zero_shot")),
    ("tasks", ("code2doc", "classify", "dataset", "instruction")),
    ("models", ("mini-t5", "mini-llama")),
])
def test_list_gives_one_described_line_each(capsys, what, names):
    assert main(["list", what]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    first = {line.split()[0]: line for line in lines}
    for name in names:
        assert name in first, lines
        assert len(first[name].split(None, 1)[1]) > 10  # a description, not just the name
    if what == "methods":  # the two baselines share a module: each has its own summary
        assert first["full"] != first["zero_shot"].replace("zero_shot", "full")


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


def _fail(run, data):
    """A run that fails during training (a test split that is missing), its directory kept."""
    (data / "test.jsonl").rename(data / "test.hidden")
    code = train(run, data)
    (data / "test.hidden").rename(data / "test.jsonl")
    return code


def test_a_failed_run_says_resume_or_overwrite_and_overwrite_sets_it_aside(tmp_path, data, capsys):
    run = tmp_path / "r"
    assert _fail(run, data) == 2
    err = capsys.readouterr().err
    assert status(run)["state"] == "failed"
    assert f"peftlab train --resume {run}" in err and "--overwrite" in err
    assert train(run, data) == 2  # the same command again: refused, saying what to do
    err = capsys.readouterr().err
    assert "already exists (failed)" in err and "--resume" in err and "--overwrite" in err
    before = (run / "status.json").read_text()
    assert main(["train", SMOKE, "--out", str(run), "--quiet", "--overwrite", *tiny_args(data)]) == 0
    assert status(run)["state"] == "complete"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r.failed-")]
    assert len(aside) == 1 and (aside[0] / "status.json").read_text() == before  # kept, never deleted


def test_overwrite_never_replaces_a_finished_run(tmp_path, data, capsys):
    run = tmp_path / "r"
    assert train(run, data) == 0
    metrics = (run / "metrics.json").read_text()
    capsys.readouterr()
    assert main(["train", SMOKE, "--out", str(run), "--quiet", "--overwrite", *tiny_args(data)]) == 2
    assert "never replaces a finished run" in capsys.readouterr().err
    assert (run / "metrics.json").read_text() == metrics and len(list(tmp_path.iterdir())) == 2


def test_every_config_error_is_reported_at_once_with_its_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  nmae: x\ntrain:\n  max_step: 3\n  batch_size: many\n  lr: -1\n"
                   "methods:\n  - name: lora\n    rank: 4\n  - {name: lora, dropout: 2}\n"
                   "eval: {num_beams: 0}\nmodel: {name: mini-t5}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "train.seed=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "duplicate key 'model'" in err[0]  # the YAML itself first: a key given twice
    cfg.write_text(cfg.read_text().replace("model: {name: mini-t5}\n", ""))
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "train.seed=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = [f"{cfg}:2: model.nmae: unknown key", f"{cfg}:4: train.max_step: unknown key",
                f"{cfg}:5: train.batch_size: expected an integer", f"{cfg}:6: train.lr: must be > 0",
                "override 'train.seed=-1': train.seed: must be >= 0", f"{cfg}:9: methods.0.rank: unknown key",
                f"{cfg}:10: methods.1: dropout must be in [0, 1)", f"{cfg}:11: eval.num_beams: must be >= 1"]
    assert all(line.startswith("peftlab: error: ") for line in err) and len(err) == len(expected), err
    for words in expected:
        assert any(words in line for line in err), (words, err)
    assert not (tmp_path / "r").exists()


def test_one_error_is_still_one_config_error(tmp_path):
    from peftlab.config import load_config
    from peftlab.errors import ConfigError, ConfigErrors
    from peftlab.schema import RunConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {lr: 0.1, batch_size: 0}\n")
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, cfg)
    assert not isinstance(e.value, ConfigErrors) and str(e.value) == f"{cfg}:1: train.batch_size: must be >= 1, got 0"
    cfg.write_text("train: {lr: 0, batch_size: 0}\n")
    with pytest.raises(ConfigErrors) as e:
        load_config(RunConfig, cfg)
    assert len(e.value.errors) == 2 and all(isinstance(x, ConfigError) for x in e.value.errors)
    assert str(e.value).splitlines() == [str(x) for x in e.value.errors]


def test_report_to_does_not_make_a_run_another_config(tmp_path, data):
    """Where a run reports to changes nothing it makes: a bench reuses it."""
    from peftlab.config import load_config
    from peftlab.lab.run import same_config
    from peftlab.schema import RunConfig

    run = tmp_path / "r"
    assert train(run, data) == 0
    cfg = load_config(RunConfig, SMOKE, tiny_args(data))
    assert same_config(run, cfg)
    assert same_config(run, load_config(RunConfig, SMOKE, [*tiny_args(data), "train.report_to=[wandb]"]))
    assert not same_config(run, load_config(RunConfig, SMOKE, [*tiny_args(data), "train.lr=0.5"]))
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
