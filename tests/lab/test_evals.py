"""`peftlab eval RUN --name N --set data.*=...` and a bench's `evals:`: trained runs scored on other
test rows from their saved adapters, without training again (peftlab.lab.evals)."""

import json

import pytest

from bench_helpers import write_spec
from peftlab.lab.cli import main
from peftlab.errors import ConfigError
from peftlab.lab.evals import is_current, read_evals
from peftlab.lab.bench.run import load_bench, run_bench

ONE = "  - {label: LoRA, methods: [{name: lora, r: 4}]}\n"
EVALS = "evals: {same-test: {data.test_split: test}, valid-rows: {data.test_split: valid}}\n"


def _spec(tmp, evals=EVALS):
    spec = write_spec(tmp, methods=ONE, seeds="[0]", extra=f"isolate: false\n{evals}")
    spec.write_text(spec.read_text().replace("  - {task: {name: classify", "  # - {task: {name: classify"))
    return spec


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evals")
    spec, out = _spec(tmp), tmp / "out"
    run_bench(spec, out, progress=False)
    return spec, out, out / "code2doc" / "lora" / "seed0"


def test_the_runs_own_test_rows_score_as_the_run_did(bench):
    """The evaluation of the test split the run was scored on gives the run's own scores and floors
    (same adapter, same rows, the decoding the run chose): the path is the run's own."""
    _, _, run = bench
    metrics = json.loads((run / "metrics.json").read_text())
    same = read_evals(run)["same-test"]
    mine, theirs = same["task_metrics"]["code2doc"], metrics["task_metrics"]["code2doc"]
    for key in ("bleu", "codexglue_bleu", "rouge_l", "distinct_predictions", "eval_examples"):
        assert mine[key] == theirs[key], key
    assert same["floors"] == metrics["floors"] and same["beats_floors"] == metrics["beats_floors"]
    assert same["overrides"] == {"data.test_split": "test"} and same["test_split"] == "test"
    assert (run / "evals" / "same-test.predictions.jsonl").read_text() == (run / "predictions.jsonl").read_text()
    valid = read_evals(run)["valid-rows"]
    assert valid["test_split"] == "valid" and valid["task_metrics"]["code2doc"]["eval_examples"] == valid["test_examples"]


def test_the_report_shows_each_evaluation_as_its_own_table(bench):
    _, out, _ = bench
    md = (out / "report.md").read_text()
    sections = md.split("\n## ")
    titles = [s.splitlines()[0] for s in sections[1:]]
    assert titles[:3] == ["Results", "Results (same-test)", "Results (valid-rows)"]
    headers = [next(line for line in s.splitlines() if line.startswith("| Method |")) for s in sections[1:4]]
    assert "code2doc CodeXGLUE BLEU |" in headers[0] and "Trainable params" in headers[0]
    for header in headers[1:]:  # an evaluation's own table: its scores, no cost columns
        assert "code2doc CodeXGLUE BLEU |" in header and "Trainable params" not in header
    assert md.index("## Results (valid-rows)") < md.index("![") < md.index("## Task: code2doc")  # plots after them
    assert "## Task: code2doc (same-test)" in md and "## Task: code2doc (valid-rows)" in md
    assert "valid-rows: the same trained runs scored on other test rows (data.test_split=valid)" in md
    for name in ("same-test", "valid-rows"):  # score vs parameters again on each evaluation's rows
        assert (out / "plots" / f"score_vs_params.{name}.png").stat().st_size > 0
        assert f"](plots/score_vs_params.{name}.png)" in md
        assert f"on the {name} evaluation" in (out / "report.html").read_text()  # its caption
    index = json.loads((out / "bench.json").read_text())
    assert index["evals"] == {"same-test": {"data.test_split": "test"}, "valid-rows": {"data.test_split": "valid"}}


def test_a_new_evaluation_reuses_the_training(bench, tmp_path):
    spec, out, run = bench
    before = (run / "metrics.json").read_bytes()
    spec.write_text(spec.read_text().replace(EVALS, EVALS.replace("}}\n", "}, train-rows: {data.test_split: train}}\n")))
    index = run_bench(spec, out, progress=False, report=False)
    assert [r["how"] for r in index["runs"]] == ["reused"]
    assert (run / "metrics.json").read_bytes() == before  # not trained again
    assert is_current(run, "train-rows", {"data.test_split": "train"})
    assert not is_current(run, "train-rows", {"data.test_split": "valid"})  # other edits: made again


def test_cli_eval_and_its_errors(bench, capsys):
    _, _, run = bench
    assert main(["eval", str(run), "--name", "cli", "--set", "data.test_split=valid"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "cli" and "code2doc" in printed["task_metrics"]
    assert read_evals(run)["cli"]["overrides"] == {"data.test_split": "valid"}
    assert main(["eval", str(run), "--name", "bad", "--set", "train.lr=1"]) == 2
    assert "'train.lr' cannot change in an evaluation" in capsys.readouterr().err
    assert main(["eval", str(run), "--set", "data.test_split=valid"]) == 2  # no --name
    assert main(["eval", str(run), "--name", "../up", "--set", "data.test_split=valid"]) == 2
    assert not (run.parent / "up.json").exists()


def test_spec_errors_name_the_evaluation(tmp_path):
    spec = _spec(tmp_path, "evals:\n  lr: {train.lr: 1}\n")
    with pytest.raises(ConfigError, match=r"bench.yaml:\d+.*evals.*'train.lr' cannot change"):
        load_bench(spec)
    spec = _spec(tmp_path / "b", "evals:\n  other: {data.task.no_such_field: 1}\n")
    with pytest.raises(ConfigError, match=r"bench.yaml:\d+: evals.other: .*no_such_field"):
        load_bench(spec)
