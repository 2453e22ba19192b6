"""What a bench, a search, a comparison and a publication refuse to do, because it would silently give
a wrong result or replace someone's: each case failed before its check (a hostile user's list)."""

from __future__ import annotations

import json
import shutil

import pytest

from bench_helpers import write_spec
from peftlab.errors import ConfigError, RunDirError
from peftlab.lab.bench.run import load_bench, run_bench


def test_a_nested_override_edits_the_fields_it_names_and_keeps_the_rest(tmp_path):
    """``overrides: {train: {lr: 0.01}}`` used to replace the whole train section: warmup, log_every
    and the lengths fell back to defaults without a word."""
    spec = write_spec(tmp_path, extra="", seeds="[0]")
    text = spec.read_text().replace("overrides:\n", "overrides:\n  train: {lr: 0.01, warmup_steps: 3}\n", 1)
    spec.write_text(text)
    bench = load_bench(spec, ("overrides.data={max_source_length: 32}",))
    cfg = bench.runs[0].config
    assert (cfg.train.lr, cfg.train.warmup_steps, cfg.train.log_every) == (0.01, 3, 1)  # log_every from the spec
    assert cfg.data.max_source_length == 32 and cfg.data.max_target_length == 16  # the rest of data kept
    assert cfg.train.mixed_precision == "no"  # from the spec's dotted override, not reset by the mapping
    # a mapping-valued field is replaced whole, as before: eval.select {} switches selection off
    spec.write_text(text.replace("overrides:\n", "overrides:\n  eval: {select: {}}\n", 1))
    assert load_bench(spec).runs[0].config.eval.select == {}


def test_methods_that_do_not_apply_to_the_model_are_refused_before_any_run(tmp_path):
    methods = ("  - {label: LoRA, methods: [{name: lora, r: 4}]}\n"
               "  - {label: adapter v1, methods: [{name: llama_adapter, length: 2}]}\n")
    spec = write_spec(tmp_path, methods=methods, seeds="[0]")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"(?s)do not apply to their model.*'adapter v1' on mini-t5 .*does not support the 't5' family"):
        run_bench(spec, out, progress=False, report=False)
    assert not any(out.glob("*/*/seed*"))  # nothing trained, not even the LoRA runs before it


def test_a_spec_edited_while_the_bench_runs_is_refused_by_the_runs_after_the_edit(tmp_path):
    from peftlab.lab.bench.preflight import plan_digest
    from peftlab.lab.bench.run import child  # the child entry point, as `python -m` runs it

    spec = write_spec(tmp_path, seeds="[0]")
    bench = load_bench(spec)
    started = plan_digest(bench.spec, bench.runs)
    spec.write_text(spec.read_text().replace("{name: lora, r: 4}", "{name: lora, r: 2}"))
    out = tmp_path / "out"
    out.mkdir()
    result = tmp_path / "result.json"
    assert child([str(spec), str(out), "0", "[]", "0", started, str(result)]) == 0
    outcome = json.loads(result.read_text())
    assert outcome["state"] == "failed" and "changed while the bench ran" in outcome["error"]
    assert not (out / bench.runs[0].rel / "metrics.json").exists()


def test_publishing_over_another_benchs_record_is_refused(tmp_path):
    from test_report import make_bench

    from peftlab.lab.report.publish import publish

    a = make_bench(tmp_path / "a")
    b = make_bench(tmp_path / "b")
    index = json.loads((b / "bench.json").read_text())
    index["started"] = "another day"
    (b / "bench.json").write_text(json.dumps(index))
    publish(a, tmp_path / "pub-a")
    publish(a, tmp_path / "pub-a")  # its own earlier publication: updated in place
    publish(b, tmp_path / "pub-b")
    before = (tmp_path / "pub-b" / "bench.json").read_bytes()
    with pytest.raises(RunDirError, match="holds the record of another bench"):
        publish(a, tmp_path / "pub-b")
    assert (tmp_path / "pub-b" / "bench.json").read_bytes() == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("a user's file")
    with pytest.raises(RunDirError, match="not published from"):
        publish(a, tmp_path / "notes")


def test_configs_sharing_a_file_name_get_their_own_run_directories(tmp_path):
    from peftlab.lab.compare import run_names

    one, two = tmp_path / "mini-t5" / "ia3.yaml", tmp_path / "mini-llama" / "ia3.yaml"
    assert run_names([one, two, tmp_path / "x" / "lora.yaml"]) == ["mini-t5-ia3", "mini-llama-ia3", "lora"]
    with pytest.raises(ConfigError, match="would share the run directory"):
        run_names([one, one])


def test_a_search_rerun_with_another_spec_into_the_same_directory_is_refused(tmp_path):
    from test_search import write_search

    from peftlab.lab.cli import main

    spec = write_search(tmp_path, trials=1)
    out = tmp_path / "out"
    assert main(["search", str(spec), "--out", str(out), "--quiet"]) == 0
    assert main(["search", str(spec), "--out", str(out), "--quiet", "trials=2"]) == 0  # more trials: fine
    spec.write_text(spec.read_text().replace("budget: {steps: 2}", "budget: {steps: 3}"))
    assert main(["search", str(spec), "--out", str(out), "--quiet", "trials=3"]) == 2
    shutil.rmtree(out / "trial-0000", ignore_errors=True)
