"""`peftlab compare`: several configs, one table; finished runs are reused, failed ones kept aside."""

import json
from pathlib import Path

import pytest

from peftlab.lab.compare import compare, markdown_table
from peftlab.errors import ConfigError

SMOKE = (Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml").read_text()
FAST = ["train.max_steps=2", "data.max_train_examples=32", "data.max_eval_examples=4", "eval.max_examples=4",
        "eval.max_new_tokens=4", "data.max_source_length=64"]


def test_compare_runs_each_config_and_writes_the_table(tmp_path, capsys):
    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    (cfgs / "a_zero.yaml").write_text(SMOKE.replace("methods:\n", "label: zero\nmethods:\n  - name: zero_shot\nunused:\n"))
    (cfgs / "b_lora.yaml").write_text(SMOKE)
    # a_zero has an unknown key: nothing may run before every config is valid
    with pytest.raises(ConfigError, match="a_zero.yaml:\\d+: unused"):
        compare([cfgs], tmp_path / "out", overrides=FAST, progress=False)
    assert not (tmp_path / "out").exists()
    text = SMOKE.split("methods:")[0] + "label: zero\nmethods:\n  - name: zero_shot\ndata:" + SMOKE.split("data:")[1]
    (cfgs / "a_zero.yaml").write_text(text)
    rows = compare([cfgs], tmp_path / "out", overrides=FAST, progress=False)
    assert [r["method"] for r in rows] == ["zero", "LoRA r=8 + hyper alignment"]
    assert rows[0]["trainable_params"] == 0 and rows[0]["steps"] == 0
    out = capsys.readouterr().out
    assert "| zero |" in out and "Trainable params" in out
    for f in ("results.md", "results.json", "results.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    meta = json.loads((tmp_path / "out" / "results.json").read_text())["meta"]
    assert {"command", "device", "versions", "date"} <= set(meta)
    # under the table: the first test rows side by side, also written as a results file
    assert out.index("| Function | Reference | zero | LoRA r=8 + hyper alignment |") > out.index("| zero |")
    excerpt = json.loads((tmp_path / "out" / "excerpt.json").read_text())
    preds = [json.loads(x) for x in (tmp_path / "out" / "b_lora" / "predictions.jsonl").read_text().splitlines()]
    assert [r["outputs"][1] for r in excerpt["rows"]] == [p["prediction"] for p in preds[:3]]
    assert [r["reference"] for r in excerpt["rows"]] == [p["reference"] for p in preds[:3]]
    assert all("def " in r["input"] and '"""' not in r["input"] for r in excerpt["rows"])  # the function, no prompt
    assert (tmp_path / "out" / "excerpt.md").read_text().startswith("| Function | Reference |")
    # a second compare reuses the finished runs (same metrics, no retraining)
    before = json.loads((tmp_path / "out" / "b_lora" / "metrics.json").read_text())
    again = compare([cfgs], tmp_path / "out", overrides=FAST, progress=False)
    assert again[1]["train_seconds"] == before["train_seconds"]


def test_markdown_table_formats_missing_values():
    t = markdown_table([{"method": "x", "trainable_params": 1234, "bleu": None}])
    assert "| x | 1,234 |" in t and "–" in t


def test_missing_config_path(tmp_path):
    with pytest.raises(ConfigError, match="no such config"):
        compare([tmp_path / "nope.yaml"], tmp_path / "o")


def test_optional_columns_show_only_when_a_row_has_them():
    row = {"method": "x", "trainable_params": 1, "bleu": 1.0}
    assert "Perplexity" not in markdown_table([row]) and "Val loss" not in markdown_table([row])
    t = markdown_table([row, dict(row, ppl=12.345, eval_loss=2.5, peak_memory_mib=1536.2)])
    assert "| Val loss | Perplexity | Peak memory MiB |" in t and "| 2.500 | 12.35 | 1,536 |" in t


def test_compare_retrains_a_run_whose_config_was_edited(tmp_path):
    """A finished run is reused only for the same config; an edited one is set aside, never reused."""
    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    (cfgs / "b_lora.yaml").write_text(SMOKE)
    first = compare([cfgs], tmp_path / "out", overrides=FAST, progress=False, isolate=False)
    again = compare([cfgs], tmp_path / "out", overrides=[*FAST[1:], "train.max_steps=3"], progress=False, isolate=False)
    assert first[0]["steps"] == 2 and again[0]["steps"] == 3
    assert [p.name.split(".")[0] for p in (tmp_path / "out").iterdir() if ".incomplete-" in p.name] == ["b_lora"]


def test_compare_trains_each_run_in_its_own_process(tmp_path, monkeypatch):
    """A run happens in a child process (its peak memory its own): a train_run broken in this
    process does not reach it; a failure in the child is raised here naming the config."""
    import peftlab.lab.child
    import peftlab.lab.run

    from peftlab.lab.compare import CompareError

    def broken(*a, **k):
        raise AssertionError("trained in the comparing process")

    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    (cfgs / "b_lora.yaml").write_text(SMOKE)
    monkeypatch.setattr(peftlab.lab.run, "train_run", broken)
    rows = compare([cfgs], tmp_path / "out", overrides=FAST, progress=False)
    assert rows[0]["steps"] == 2 and rows[0]["peak_memory_mib"] > 0
    assert not list((tmp_path / "out").glob(".*.result.json"))  # the child's outcome file is gone

    monkeypatch.setattr(peftlab.lab.child, "in_a_process", lambda *a: {"state": "failed", "error": "the run's process "
                                                                   "was killed by signal 9 (SIGKILL: out of memory?)"})
    with pytest.raises(CompareError, match="b_lora.yaml: the run's process was killed by signal 9"):
        compare([cfgs], tmp_path / "out2", overrides=FAST, progress=False)
