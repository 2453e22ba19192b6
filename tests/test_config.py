"""Run configs: YAML with line numbers, overrides, typed validation, nearest-key suggestions."""

import pytest

from peftlab.config import from_dict, load_config, parse_override, to_dict
from peftlab.errors import ConfigError
from peftlab.methods.alignment import AlignmentConfig
from peftlab.methods.lora import LoraConfig
from peftlab.schema import RunConfig


def write(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_full_config_round_trips(tmp_path):
    p = write(tmp_path, """
model: {name: mini-t5, init: random, config: {d_model: 32}}
methods:
  - {name: lora, r: 4, targets: [q, k]}
  - name: alignment
    hidden: 16
train: {max_steps: 3, lr: 1e-4}
""")
    cfg = load_config(RunConfig, p)
    assert cfg.methods == [LoraConfig(r=4, targets=("q", "k")), AlignmentConfig(hidden=16)]
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.config == {"d_model": 32}
    again = from_dict(RunConfig, to_dict(cfg))
    assert again == cfg
    assert to_dict(cfg)["methods"][0]["name"] == "lora"


def test_overrides_apply_on_top(tmp_path):
    p = write(tmp_path, "methods: [{name: lora, r: 4}]\ntrain: {max_steps: 3}\n")
    cfg = load_config(RunConfig, p, ["train.max_steps=7", "methods.0.r=16", "data.max_eval_examples=null"])
    assert cfg.train.max_steps == 7 and cfg.methods[0].r == 16 and cfg.data.max_eval_examples is None
    assert parse_override("a.b=[1, 2]") == (("a", "b"), [1, 2])


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    p = write(tmp_path, "model:\n  name: mini-t5\ntrain:\n  max_step: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, p)
    msg = str(e.value)
    assert f"{p}:4: train.max_step" in msg and "did you mean 'max_steps'" in msg


def test_wrong_type_names_field_and_line(tmp_path):
    p = write(tmp_path, "train:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"run.yaml:2: train.batch_size: expected an integer, got 'many'"):
        load_config(RunConfig, p)


def test_method_errors_name_the_list_item(tmp_path):
    p = write(tmp_path, "methods:\n  - name: lora\n    rank: 4\n")
    with pytest.raises(ConfigError, match=r"run.yaml:3: methods.0.rank: unknown key 'rank'.*did you mean 'r'"):
        load_config(RunConfig, p)
    p = write(tmp_path, "methods:\n  - name: lorra\n")
    with pytest.raises(ConfigError, match=r"run.yaml:2: methods.0.name: unknown method 'lorra' \(did you mean 'lora'"):
        load_config(RunConfig, p)


def test_value_checks_from_post_init(tmp_path):
    p = write(tmp_path, "methods: [{name: lora, r: 0}]\n")
    with pytest.raises(ConfigError, match="r must be >= 1"):
        load_config(RunConfig, p)
    with pytest.raises(ConfigError, match="set max_steps, max_seconds"):
        load_config(RunConfig, None, ["train.max_steps=null"])
    with pytest.raises(ConfigError, match="expected one of 'no' | 'bf16' | 'fp16'"):
        load_config(RunConfig, None, ["train.mixed_precision=fp8"])


def test_malformed_yaml_and_missing_file(tmp_path):
    p = write(tmp_path, "model:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"run.yaml:\d+: malformed YAML"):
        load_config(RunConfig, p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(RunConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(RunConfig, None, ["train.max_steps"])


def test_shipped_configs_all_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    paths = sorted(root.rglob("*.yaml"))
    assert paths
    for p in paths:
        if p.parent.name == "pretrain" and p.name.startswith("corpus-"):  # corpus specs (peftlab data corpus)
            from peftlab.pretrain.packages import load_corpus_spec

            load_corpus_spec(p)
        elif p.name.startswith("pretrain-") or p.parent.name == "pretrain":
            from peftlab.pretrain.recipe import load_pretrain_config

            load_pretrain_config(p)
        elif p.parent.name == "bench":  # bench specs (peftlab bench), every run config inside checked
            from peftlab.lab.bench.run import load_bench

            load_bench(p)
        elif p.parent.name == "search":  # search specs (peftlab search)
            from peftlab.lab.search.spec import load_search

            load_search(p)
        else:
            load_config(RunConfig, p)


def test_every_shipped_config_lets_precision_choose_itself():
    """`mixed_precision: auto` in every shipped config, recipe and bench spec (an explicit
    bf16 runs ~50x slower on a CPU without native bf16). Any `mixed_precision` key, at any depth."""
    from pathlib import Path

    import yaml

    def values(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "mixed_precision":
                    yield v
                yield from values(v)
        elif isinstance(node, list):
            for v in node:
                yield from values(v)

    root = Path(__file__).resolve().parents[1] / "configs"
    bad = {str(p.relative_to(root)): v for p in sorted(root.rglob("*.yaml"))
           for v in values(yaml.safe_load(p.read_text())) if v != "auto"}
    assert not bad, bad
    run = load_config(RunConfig, root / "papers" / "seed003" / "v1.yaml")
    assert run.train.mixed_precision == "auto"


def test_a_config_extends_another_deep_merged_and_errors_name_the_file_that_set_the_value(tmp_path):
    """``extends:`` layers a config over another (relative path): mappings merge key by key, lists and
    values replace; an error in an inherited value names the other file's line."""
    from peftlab.errors import ConfigError

    (tmp_path / "base.yaml").write_text("label: base\nmodel:\n  name: mini-t5\ntrain:\n  lr: 0.001\n"
                                        "  max_steps: 7\nmethods:\n  - {name: lora, r: 4}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("extends: ../base.yaml\nlabel: child\ntrain:\n  lr: 0.01\n")
    cfg = load_config(RunConfig, tmp_path / "sub" / "child.yaml", ["train.warmup_steps=2"])
    assert cfg.label == "child" and cfg.model.name == "mini-t5"
    assert (cfg.train.lr, cfg.train.max_steps, cfg.train.warmup_steps) == (0.01, 7, 2)  # the rest of train kept
    assert cfg.methods[0].r == 4
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.001\n  max_steps: -3\n")
    with pytest.raises(ConfigError, match=r"base.yaml:3: train.max_steps"):
        load_config(RunConfig, tmp_path / "sub" / "child.yaml")
    (tmp_path / "base.yaml").write_text("extends: sub/child.yaml\n")
    with pytest.raises(ConfigError, match="a loop"):
        load_config(RunConfig, tmp_path / "sub" / "child.yaml")
    (tmp_path / "sub" / "child.yaml").write_text("extends: ../nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"child.yaml:1: extends: no config"):
        load_config(RunConfig, tmp_path / "sub" / "child.yaml")


def test_a_config_reads_the_defaults_of_the_version_it_declares(tmp_path):
    """Version 2 turned fast_dropout on by default; a config.yaml that says version 1 (or a run's
    config written before) keeps version 1's default for what it leaves out, so it rebuilds the same run."""
    from peftlab.schema import CONFIG_VERSION

    assert from_dict(RunConfig, {}).train.fast_dropout is True and from_dict(RunConfig, {}).version == CONFIG_VERSION
    old = from_dict(RunConfig, {"version": 1, "train": {"lr": 0.01}})
    assert old.train.fast_dropout is False and old.train.lr == 0.01 and old.version == 1
    assert from_dict(RunConfig, {"version": 1, "train": {"fast_dropout": True}}).train.fast_dropout is True
    assert to_dict(from_dict(RunConfig, {}))["version"] == CONFIG_VERSION  # every run's config.yaml says its version
    assert from_dict(RunConfig, to_dict(old)) == old  # written and read back: the same run
    with pytest.raises(ConfigError, match=r"version: config version 9 is not one this peftlab reads"):
        from_dict(RunConfig, {"version": 9})


def test_a_finished_run_is_reused_when_only_result_neutral_fields_differ(tmp_path):
    import dataclasses

    import yaml

    from peftlab.lab import rundir
    from peftlab.lab.run import same_config

    cfg = from_dict(RunConfig, {"version": 1})  # made under the old defaults
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text(yaml.safe_dump(to_dict(cfg)))
    today = dataclasses.replace(cfg, version=2, train=dataclasses.replace(cfg.train, fast_dropout=True, log_every=3,
                                                                           report_to=["tensorboard"]))
    assert same_config(run, today)
    assert not same_config(run, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=0.5)))
