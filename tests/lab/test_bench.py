"""`peftlab bench`: methods × tasks × seeds into run directories, a report, resumable, checked specs."""

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_helpers import write_spec
from peftlab.lab.bench.batchfit import cpu_estimate, largest_fitting, saved_activation_bytes, worst_case_batch
from peftlab.lab.cli import main
from peftlab.errors import ConfigError
from peftlab.lab.bench.run import load_bench, run_bench, slug


def _models_alive() -> int:
    from transformers import PreTrainedModel

    gc.collect()
    return sum(issubclass(type(o), PreTrainedModel) for o in gc.get_objects())


def test_two_methods_two_tasks_two_seeds_finish_under_a_minute_with_a_full_report(tmp_path, capsys):
    spec = write_spec(tmp_path, extra="batch_size: {fit: true, max: 8}\nisolate: false\n")
    alive = _models_alive()
    start = time.perf_counter()
    assert main(["bench", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert time.perf_counter() - start < 60
    assert _models_alive() <= alive  # no model outlives its run
    out = tmp_path / "out"
    index = json.loads((out / "bench.json").read_text())
    dirs = sorted(r["dir"] for r in index["runs"])
    want = [f"{t}/{m}/seed{s}" for t in ("code2doc", "sentiment") for m in ("lora", "ia3") for s in (0, 1)]
    assert dirs == sorted(want)
    for r in index["runs"]:
        assert r["state"] == "complete" and r["how"] == "trained"
        assert json.loads((out / r["dir"] / "status.json").read_text())["state"] == "complete"
        # the fitted batch size is recorded beside the runs of its pair, and the runs used it
        fit = json.loads((out / r["dir"]).parent.joinpath("batch_fit.json").read_text())
        assert 1 <= fit["batch_size"] <= 8 and fit["how"].startswith("cpu estimate") and fit["per_example_bytes"] > 0
        assert f"batch_size: {fit['batch_size']}" in (out / r["dir"] / "config.yaml").read_text()
        assert r["batch_size"] == fit["batch_size"]
    # every table cell is filled: no "–" in a method row of the main table or of the task tables
    report = (out / "report.md").read_text()
    main_rows = [ln for ln in report.splitlines() if ln.startswith("| LoRA |") or ln.startswith("| IA3 |")]
    assert len(main_rows) == 2 + 2 + 2  # main table + one table per task
    assert all("–" not in ln for ln in main_rows)
    assert "| floor: majority class |" in report and "| floor: BM25 retrieval |" in report
    assert "| floor: best constant |" in report
    # where each run's time went, and evaluation's share per method (issue 34)
    seconds = json.loads((out / index["runs"][0]["dir"] / "metrics.json").read_text())["seconds"]
    assert set(seconds) == {"train", "select", "test", "perplexity", "floors", "eval_share"}
    assert seconds["train"] > 0 and seconds["test"] > 0 and 0 < seconds["eval_share"] < 1
    assert "Where the time of 8 runs went (metrics.json `seconds`): train " in report
    assert "Evaluation (selection + test) as a share of each run's train + scoring time, median per method: LoRA " in report
    for name in ("loss_curves", "score_vs_params", "score_vs_time", "peak_memory"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
        assert f"(plots/{name}.png)" in report
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 4 and "plots/" not in html  # self-contained
    assert "<table>" in html and "LoRA" in html
    assert "4 runs complete" not in capsys.readouterr().out  # 8 of them
    # a second bench into the same directory reuses every run
    index["started"] = "2000-01-01T00:00:00+00:00"  # as if begun long ago: a rerun keeps when it first started
    (out / "bench.json").write_text(json.dumps(index))
    again = run_bench(spec, out, progress=False, report=False)
    assert {r["how"] for r in again["runs"]} == {"reused"}
    assert again["started"] == "2000-01-01T00:00:00+00:00"


def test_a_killed_bench_resumes_without_redoing_finished_runs(tmp_path):
    """Killed with SIGKILL while each run has its own process (isolate, the default)."""
    spec = write_spec(tmp_path, methods="  - {label: LoRA, methods: [{name: lora, r: 4}]}\n", budget="{steps: 12}")
    text = spec.read_text().replace("  - {task: {name: classify", "  # - {task: {name: classify")
    text = text.replace("  train.log_every: 1\n", "  train.log_every: 1\n  train.checkpoint_every: 3\n")
    spec.write_text(text)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "peftlab", "bench", str(spec), "--out", str(out), "--quiet",
                             "--no-report"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def complete() -> list:
        return sorted(p.parent for p in out.glob("*/*/*/status.json")
                      if json.loads(p.read_text() or "{}").get("state") == "complete")

    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not complete():
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the bench finished before it could be killed"
    done = complete()
    assert len(done) == 1
    before = {d: (d / "metrics.json").read_bytes() for d in done}
    for lock in out.glob("*/*/*/.peftlab.lock"):  # the run the bench was in died with it
        pid = json.loads(lock.read_text() or "{}").get("pid")
        for _ in range(100):
            if pid is None or not _alive(pid):
                break
            time.sleep(0.05)
        assert pid is None or not _alive(pid)
    index = run_bench(spec, out, progress=False, report=False)  # each run not done: in its own process
    assert all(r["state"] == "complete" for r in index["runs"])
    how = {str(out / r["dir"]): r["how"] for r in index["runs"]}
    for d, metrics in before.items():
        assert how[str(d)] == "reused" and (d / "metrics.json").read_bytes() == metrics  # not redone
    assert {h for d, h in how.items() if d not in map(str, before)} <= {"resumed", "trained"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").is_file() or Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_spec_errors_name_file_line_and_field(tmp_path):
    spec = write_spec(tmp_path, methods="  - {label: LoRA, methods: [{name: lora, r: 0}]}\n")
    with pytest.raises(ConfigError, match=r"bench.yaml:\d+: methods.0.methods.0: r must be >= 1"):
        load_bench(spec)
    spec = write_spec(tmp_path, methods="  - {label: LoRA, methods: [{name: lora, rank: 4}]}\n")
    with pytest.raises(ConfigError,
                       match=r"bench.yaml:\d+: methods.0.methods.0.rank: unknown key 'rank' \(did you mean 'r'\?\)"):
        load_bench(spec)
    spec = write_spec(tmp_path, methods="  - {label: LoRA, method: [lora]}\n")
    with pytest.raises(ConfigError, match=r"bench.yaml:\d+: methods.0.method: unknown key 'method' \(did you mean "
                                          r"'methods'\?\)"):
        load_bench(spec)
    spec = write_spec(tmp_path, methods="  - {label: A, methods: [lora]}\n  - {label: a, methods: [ia3]}\n")
    with pytest.raises(ConfigError, match=r"bench.yaml:\d+: methods.1: 'a' has the same name"):
        load_bench(spec)
    spec = write_spec(tmp_path, budget="{steps: 2, seconds: 10}")
    with pytest.raises(ConfigError, match=r"bench.yaml:\d+: budget: give exactly one of steps"):
        load_bench(spec)
    spec = write_spec(tmp_path, seeds="[1, 1]")
    with pytest.raises(ConfigError, match=r"bench.yaml:\d+: seeds: seeds must be distinct"):
        load_bench(spec)
    # a run-config field set by an entry's overrides: the line of that override, and which run
    spec = write_spec(tmp_path, methods="  - label: LoRA\n    methods: [lora]\n    overrides: {train.lr: -1}\n")
    line = spec.read_text().splitlines().index("    overrides: {train.lr: -1}") + 1
    with pytest.raises(ConfigError, match=rf"bench.yaml:{line}: train.lr: must be > 0, got -1.0 \(in the run of "
                                          r"method 'LoRA' on task 'code2doc'\)"):
        load_bench(spec)
    spec = write_spec(tmp_path, extra="report: {columns: [trainable_params, wall_time]}\n")
    with pytest.raises(ConfigError, match=r"bench.yaml:\d+: report.columns: unknown column 'wall_time'"):
        load_bench(spec)
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace("base: ", "base: nowhere/"))
    with pytest.raises(ConfigError, match=r"bench.yaml:1: base: no run config"):
        load_bench(spec)
    # the command line says it in one line, exit status 2
    assert main(["bench", str(spec), "--out", str(tmp_path / "o")]) == 2


def test_budget_seeds_and_directories(tmp_path):
    spec = write_spec(tmp_path, budget="{seconds: 30}", seeds="[3]")
    bench = load_bench(spec, ("seeds=[3, 4]",))
    assert len(bench.runs) == 2 * 2 * 2
    first = bench.runs[0]
    assert first.rel == "code2doc/lora/seed3" and first.config.train.seed == 3
    assert first.config.train.max_seconds == 30 and first.config.train.max_steps is None
    assert [r.seed for r in bench.runs] == [3] * 4 + [4] * 4  # seeds outermost: every pair once first
    assert first.config.label == "LoRA" and bench.runs[1].config.display_name() == "IA3"
    assert slug("LoRA r=32 + hyper alignment") == "lora-r32-hyper-alignment"
    # --set on the spec addresses entries in their full form, shorthands included
    bench = load_bench(spec, ("tasks.0.task.template='code: {code}'", "tasks.1.label=sst",
                              "methods.1.methods.0.name=lora"))
    assert bench.runs[0].config.data.task.template == "code: {code}" and bench.task_labels == ["code2doc", "sst"]
    assert bench.method_labels == ["LoRA", "LoRA r=8"] and bench.runs[-1].rel == "sst/lora-r8/seed3"
    with pytest.raises(ConfigError, match=r"override 'budget.steps=0': budget.steps: must be >= 1"):
        load_bench(spec, ("budget={}", "budget.steps=0"))


def test_largest_fitting_doubles_then_bisects():
    tried = []

    def fits_below(limit):
        def fits(b):
            tried.append(b)
            return b <= limit
        return fits

    assert largest_fitting(fits_below(37), 1, 256) == 37
    assert tried[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert largest_fitting(fits_below(1000), 1, 100) == 100
    assert largest_fitting(fits_below(0), 1, 100) == 0
    assert largest_fitting(fits_below(5), 4, 4) == 4


def test_cpu_estimate_by_hand(tiny_t5):
    # fixed 1 GB, 100 MB per example, 4 GB available, 80% usable: (3.2 - 1.0) / 0.1 = 22
    assert cpu_estimate(10**9, 10**8, 4 * 10**9, 0.8, 256, 1) == 22
    assert cpu_estimate(10**9, 10**8, 4 * 10**9, 0.8, 16, 1) == 16
    assert cpu_estimate(10**10, 10**8, 4 * 10**9, 0.8, 16, 2) == 2
    import torch

    from peftlab.config import from_dict
    from peftlab.schema import RunConfig

    cfg = from_dict(RunConfig, {"data": {"max_source_length": 16, "max_target_length": 4}})
    model = tiny_t5().train()
    one, two = (saved_activation_bytes(model, worst_case_batch(cfg, False, b, 128), torch.device("cpu"), "no")
                for b in (1, 2))
    assert 0 < one < two <= 2 * one + 1024


@pytest.mark.parametrize("table", ["seed000", "seed003"])
def test_the_seeds_table_3_is_a_bench_of_their_configs(table):
    """configs/bench/seed00X.yaml runs exactly the rows of configs/papers/seed00X/ (seed 0: the same config)."""
    from pathlib import Path

    from peftlab.config import load_config, to_dict
    from peftlab.schema import RunConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    rows = {c.label: c for c in (load_config(RunConfig, p) for p in sorted((root / "papers" / table).glob("*.yaml")))}
    bench = load_bench(root / "bench" / f"{table}.yaml")
    assert sorted(bench.method_labels) == sorted(rows)
    for run in (r for r in bench.runs if r.seed == 0 and r.stage == "main"):
        mine, theirs = to_dict(run.config), to_dict(rows[run.method])
        keys = ("model", "methods", "data", "eval", "label") + (() if run.method == "zero-shot" else ("train",))
        assert {k: mine[k] for k in keys} == {k: theirs[k] for k in keys}, run.method
    assert bench.spec.report.metrics and bench.spec.report.columns


def test_shipped_specs_load():
    from pathlib import Path

    from peftlab.lab.search.spec import load_search

    root = Path(__file__).resolve().parents[2] / "configs"
    for spec in sorted((root / "bench").glob("*.yaml")):
        assert load_bench(spec).runs
    for spec in sorted((root / "search").glob("*.yaml")):
        assert load_search(spec).metric


def test_a_multi_task_entry_has_a_column_per_task(tmp_path):
    from bench_helpers import make_sentiment
    from tiny_runs import make_data

    code, sentiment = make_data(tmp_path / "code"), make_sentiment(tmp_path / "sentiment")
    tasks = (f"  - label: both\n    task: [{{name: code2doc, path: {code}}}, {{name: classify, path: {sentiment}}}]\n")
    spec = write_spec(tmp_path, methods="  - {label: LoRA, methods: [{name: lora, r: 4}]}\n", tasks=tasks,
                      seeds="[0]", extra="isolate: false\n")
    run_bench(spec, tmp_path / "out", progress=False)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| Method | code2doc CodeXGLUE BLEU | sentiment Accuracy |" in report
    assert "## Task: both: code2doc" in report and "## Task: both: sentiment" in report
    row = next(ln for ln in report.splitlines() if ln.startswith("| LoRA |"))
    assert "–" not in row


def _status(out: Path) -> dict:
    return {p.parent.relative_to(out).as_posix(): json.loads(p.read_text() or "{}")
            for p in out.glob("*/*/*/status.json")}


def test_workers_run_side_by_side_each_on_its_share_of_the_cores(tmp_path):
    """``workers: 2``: two runs at once, each with cores // 2 torch threads (recorded in its metrics
    and the index), the same index and report as one at a time."""
    import torch

    methods = "  - {label: LoRA, methods: [{name: lora, r: 4}]}\n"
    spec = write_spec(tmp_path, methods=methods, tasks=None, extra="workers: 2\n")
    text = spec.read_text().replace("  - {task: {name: classify", "  # - {task: {name: classify")
    spec.write_text(text)
    out = tmp_path / "out"
    index = run_bench(spec, out, progress=False)
    threads = max(1, torch.get_num_threads() // 2)
    assert index["workers"] == {"runs": 2, "threads_each": threads}
    assert [r["state"] for r in index["runs"]] == ["complete", "complete"]
    for r in index["runs"]:
        assert json.loads((out / r["dir"] / "metrics.json").read_text())["device"].endswith(f", {threads} threads")
    a, b = (_status(out)[r["dir"]] for r in index["runs"])
    assert a["started"] < b["finished"] and b["started"] < a["finished"]  # they overlapped
    assert "2 runs side by side" in (out / "report.md").read_text()
    assert {r["how"] for r in run_bench(spec, out, progress=False, report=False)["runs"]} == {"reused"}


def test_sigterm_stops_every_run_side_by_side_and_a_rerun_resumes_them(tmp_path):
    """SIGTERM to a bench with two runs in flight: both record themselves interrupted (with a
    checkpoint), no run process outlives the bench, and the same command resumes both."""
    methods = "  - {label: LoRA, methods: [{name: lora, r: 4}]}\n"
    spec = write_spec(tmp_path, methods=methods, budget="{steps: 600}", extra="workers: 2\n")
    text = spec.read_text().replace("  - {task: {name: classify", "  # - {task: {name: classify")
    spec.write_text(text.replace("  train.log_every: 1\n", "  train.log_every: 50\n  train.checkpoint_every: 10\n"))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "peftlab", "bench", str(spec), "--out", str(out), "--quiet",
                             "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            runs = _status(out)
            if len(runs) == 2 and all(s.get("state") == "running" for s in runs.values()) and len(
                    {p.parent.parent for p in out.glob("*/*/*/checkpoints/*")}) == 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, "the bench finished before it could be stopped"
    assert {s["state"] for s in _status(out).values()} == {"interrupted"}, _status(out)
    index = json.loads((out / "bench.json").read_text())
    assert {r["state"] for r in index["runs"]} == {"interrupted"}
    for lock in out.glob("*/*/*/.peftlab.lock"):
        pid = json.loads(lock.read_text() or "{}").get("pid")
        assert pid is None or not _alive(pid)
    index = run_bench(spec, out, progress=False, report=False)
    assert {r["how"] for r in index["runs"]} == {"resumed"}


def test_tuning_spends_equal_runs_per_method_chooses_on_validation_and_is_reused(tmp_path):
    from peftlab.lab.bench.run import choose_lr

    methods = ("  - {label: LoRA, methods: [{name: lora, r: 4}], lr_grid: [0.001, 0.01]}\n"
               "  - {label: IA3, methods: [ia3], lr_grid: [0.003, 0.03]}\n"
               "  - {label: zero-shot, methods: [zero_shot]}\n")
    spec = write_spec(tmp_path, methods=methods, seeds="[0, 1]",
                      extra="isolate: false\ntuning: {runs: 2, steps: 1}\n")
    bench = load_bench(spec)
    tune = [r for r in bench.runs if r.stage == "tune"]
    # equal effort: 2 rates for each trained method on each task, nothing for zero-shot; tuning comes first
    assert sorted((r.task, r.method, r.lr) for r in tune) == sorted(
        (t, m, lr) for t in ("code2doc", "sentiment") for m, grid in (("LoRA", (0.001, 0.01)), ("IA3", (0.003, 0.03)))
        for lr in grid)
    assert bench.runs[:len(tune)] == tune
    for r in tune:  # scored on the validation split, one step, no decoding grid
        assert r.config.data.test_split == "valid" and r.config.train.max_steps == 1 and r.config.train.lr == r.lr
        assert r.config.eval.select == {} and r.rel.endswith(f"/tune/lr{r.lr:g}")
    out = tmp_path / "out"
    index = run_bench(spec, out, progress=False)
    assert all(r["state"] == "complete" for r in index["runs"])
    for task in ("code2doc", "sentiment"):
        for method, grid in (("lora", [0.001, 0.01]), ("ia3", [0.003, 0.03])):
            choice = json.loads((out / task / method / "tuning.json").read_text())
            assert choice["grid"] == grid and choice["chosen"] in grid and choice["tuning_runs"] == 2
            assert choice == choose_lr(list(zip(grid, choice["results"])))
            for seed in (0, 1):  # every seed trained at the chosen rate
                assert f"lr: {choice['chosen']}" in (out / task / method / f"seed{seed}" / "config.yaml").read_text()
        assert not (out / task / "zero-shot" / "tuning.json").exists()
    report = (out / "report.md").read_text()
    assert "## Learning rates" in report and "Tuning cost: 8 runs" in report
    assert "/tune/" not in report.split("## Learning rates")[0]  # tuning runs are not results
    again = run_bench(spec, out, progress=False, report=False)  # finished tuning and seed runs are reused
    assert {r["how"] for r in again["runs"]} == {"reused"}


def test_tuning_refuses_unequal_grids_and_chooses_by_loss_where_the_metric_is_flat(tmp_path):
    from peftlab.lab.bench.run import choose_lr

    methods = "  - {label: LoRA, methods: [{name: lora, r: 4}], lr_grid: [0.001]}\n  - {name: ia3}\n"
    spec = write_spec(tmp_path, methods=methods, extra="tuning: {runs: 4}\n")
    with pytest.raises(ConfigError, match=r"bench.yaml:\d+: methods.0: 'LoRA' has 1 learning rates.*equal effort"):
        load_bench(spec)
    flat = choose_lr([(0.1, {"score": 50.0, "eval_loss": 0.9, "metric": "m", "train_seconds": 1.0}),
                      (0.01, {"score": 50.0, "eval_loss": 0.7, "metric": "m", "train_seconds": 1.0}),
                      (1.0, None)])
    assert flat["chosen"] == 0.01 and flat["chosen_by"].startswith("validation loss")
    best = choose_lr([(0.1, {"score": 51.0, "eval_loss": 0.9, "metric": "m", "train_seconds": 1.0}),
                      (0.01, {"score": 50.0, "eval_loss": 0.7, "metric": "m", "train_seconds": 1.0})])
    assert best["chosen"] == 0.1 and best["chosen_by"] == "validation m"
