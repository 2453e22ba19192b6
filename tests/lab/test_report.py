"""`peftlab report`: mean ± std over seeds checked against numbers worked out by hand, on a bench
directory written here (no model runs)."""

import json

import pytest

from peftlab.lab.cli import main
from peftlab.errors import RunDirError
from peftlab.lab.report import collect, main_table, task_table, write_report

MIB = 2**20
# method -> task -> per-seed values of (primary metric, peak MiB); None: the run failed
SCORES = {
    "A": {"t1": [(10.0, 100), (12.0, 200), (14.0, 300)], "t2": [(50.0, 100), (50.0, 200), (50.0, 300)]},
    "B": {"t1": [(8.0, 50), (9.0, 50), (13.0, 50)], "t2": [(60.0, 50), (70.0, 50), None]},
}
TASKS = [
    {"label": "t1", "dir": "t1", "tasks": [{"name": "t1", "kind": "generation", "primary_metric": "codexglue_bleu",
                                             "metrics": ["codexglue_bleu", "bleu"]}]},
    {"label": "t2", "dir": "t2", "tasks": [{"name": "t2", "kind": "classification", "primary_metric": "accuracy",
                                             "metrics": ["accuracy"]}]},
]
FLOORS = {"t1": {"metric": "codexglue_bleu", "constant": {"codexglue_bleu": 11.0, "bleu": 1.0, "prediction": "Return"},
                 "retrieval": {"codexglue_bleu": 9.5, "bleu": 2.0}},
          "t2": {"metric": "accuracy", "majority": {"accuracy": 55.0, "prediction": "yes"},
                 "retrieval": {"accuracy": 40.0}}}


def make_bench(root):
    runs = []
    for m, tasks in SCORES.items():
        for t, seeds in tasks.items():
            for seed, value in enumerate(seeds):
                d = root / t / m.lower() / f"seed{seed}"
                d.mkdir(parents=True)
                runs.append({"method": m, "task": t, "seed": seed, "dir": f"{t}/{m.lower()}/seed{seed}",
                             "state": "complete" if value else "failed", "batch_size": 8})
                if value is None:
                    (d / "status.json").write_text(json.dumps({"state": "failed", "error": "RuntimeError: boom"}))
                    continue
                score, peak = value
                primary = TASKS[0 if t == "t1" else 1]["tasks"][0]["primary_metric"]
                task_metrics = {primary: score, **({"bleu": score / 10} if t == "t1" else {})}
                metrics = {"method": m, "trainable_params": 1000 if m == "A" else 10, "trainable_pct": 1.0,
                           "steps": 4, "train_seconds": 2.0 + seed, "tokens_per_second": 100.0 * (seed + 1),
                           "peak_memory_bytes": peak * MIB, "peak_memory_kind": "cpu_max_rss", "final_loss": 1.0,
                           "eval_loss": 2.0, "precision": "no", "task_metrics": {t: task_metrics},
                           "floors": {t: FLOORS[t]}}
                (d / "metrics.json").write_text(json.dumps(metrics))
                (d / "status.json").write_text(json.dumps({"state": "complete"}))
                (d / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 / s}) + "\n"
                                                           for s in range(1, 5)) + '{"step": 5, "lo')  # torn row
    index = {"spec": "x.yaml", "title": "hand", "budget": {"steps": 4, "seconds": None}, "batch_size": {"fit": False},
             "report": {"metrics": None, "columns": ["trainable_params", "peak_memory_mib", "train_seconds"]},
             "seeds": [0, 1, 2], "methods": [{"label": "A", "dir": "a"}, {"label": "B", "dir": "b"}], "tasks": TASKS,
             "runs": runs, "device": "CPU", "cpu_capability": "AVX2", "started": "now"}
    (root / "bench.json").write_text(json.dumps(index))
    return root


def test_mean_and_std_over_seeds_match_hand_computed_values(tmp_path):
    res = collect(make_bench(tmp_path))
    table = main_table(res, None, res.index["report"]["columns"])
    assert table.header == ["Method", "t1 CodeXGLUE BLEU", "t2 Accuracy", "Mean rank", "Trainable params",
                            "Peak memory MiB", "Train s"]
    a, b, constant, majority, retrieval = table.rows
    # A, t1: 10, 12, 14 -> mean 12, sample std 2; t2: 50 x3 -> std 0, not above the majority floor (55)
    # cost columns over all 6 runs of A: peak 100, 200, 300 MiB twice -> 200 ± sqrt(4·100²/5) = 89.4;
    # train s 2, 3, 4 twice -> 3.0 ± sqrt(4/5) = 0.89; parameters: no "± 0"
    # mean rank: t1 A > B at every seed; t2 B > A at seeds 0, 1, and at seed 2 B failed, A alone ranks 1:
    # A 1.5, 1.5, 1.0 -> 1.33 ± sqrt((2 · (1/6)² + (1/3)²) / 2) = 0.29; B 1.5, 1.5 (no seed 2) -> 1.5 ± 0 (2/3)
    assert a == ["A", "12.00 ± 2.00", "50.00 ± 0.00 †", "1.3 ± 0.3", "1,000", "200 ± 89", "3.0 ± 0.9"]
    # B, t1: 8, 9, 13 -> mean 10, std sqrt(((-2)² + (-1)² + 3²) / 2) = sqrt(7) = 2.6458 -> below the constant (11)
    # t2: one seed failed: 60, 70 -> 65 ± 7.07 over 2 of 3 seeds; train s over its 5 runs: 2, 3, 4, 2, 3
    # -> 2.8 ± sqrt((0.64 + 0.04 + 1.44 + 0.64 + 0.04) / 4) = 0.84
    assert b == ["B", "10.00 ± 2.65 †", "65.00 ± 7.07 (2/3)", "1.5 ± 0.0 (2/3)", "10", "50 ± 0", "2.8 ± 0.8"]
    assert constant == ["floor: best constant", "11.00", "–", "–", "–", "–", "–"]
    assert majority == ["floor: majority class", "–", "55.00", "–", "–", "–", "–"]
    assert retrieval == ["floor: BM25 retrieval", "9.50", "40.00", "–", "–", "–", "–"]
    # no per-row statistics: no score is tested, so none is marked best; the costs' lowest means are
    # (memory, time), mean ranks are left to the critical difference, parameter counts unmarked
    assert table.bold == {(1, 5), (1, 6)}
    md = table.markdown()
    assert "| A | 12.00 ± 2.00 | 50.00 ± 0.00 † |" in md and "†: the mean does not exceed a floor" in md
    assert "No per-row statistics were kept, so no difference is tested" in md
    assert table.untested == ["t1 CodeXGLUE BLEU", "t2 Accuracy"] and not table.claims
    t1 = task_table(res, TASKS[0], TASKS[0]["tasks"][0])
    assert t1.header[:3] == ["Method", "CodeXGLUE BLEU", "BLEU"] and "Perplexity" not in t1.header  # no empty column
    # BLEU = score / 10: A 1.2 ± 0.2, B 1.0 ± 0.26; both at or below the retrieval floor's BLEU (2.0)
    assert t1.rows[0][2] == "1.20 ± 0.20 †" and t1.rows[1][2] == "1.00 ± 0.26 †"
    assert t1.rows[0][1] == "12.00 ± 2.00"  # the primary metric above both floors: unmarked


def test_report_files_and_missing_runs(tmp_path):
    root = make_bench(tmp_path)
    assert main(["report", str(root)]) == 0
    md = (root / "report.md").read_text()
    assert md.startswith("# hand") and "budget: equal steps (4 optimizer steps)" in md
    assert "## Missing runs" in md and "`t2/b/seed2`: failed (RuntimeError: boom)" in md
    assert "## Task: t1" in md and "## Task: t2" in md
    html = (root / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<td class=\"num\">12.00 ± 2.00</td>" in html
    assert "What the tests say" in md and "t1 CodeXGLUE BLEU: no test" in md
    for name in ("loss_curves", "score_vs_params", "score_vs_time", "peak_memory"):
        assert (root / "plots" / f"{name}.png").is_file()


def test_not_a_bench_directory(tmp_path):
    with pytest.raises(RunDirError, match="not a bench directory"):
        collect(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    with pytest.raises(RunDirError):
        write_report(tmp_path / "nope")


def test_timing_section_names_runs_that_shared_the_cpu(tmp_path):
    """Runs record cpu_share; the report gives its spread and names the runs below SHARED_CPU (their
    time columns are not the method's), in report.md and report.html."""
    root = make_bench(tmp_path)
    assert "## Timing" not in (main(["report", str(root)]) == 0 and (root / "report.md").read_text())
    for path in root.glob("*/*/seed*/metrics.json"):
        m = json.loads(path.read_text())
        m["cpu_share"] = 0.55 if path.parent.as_posix().endswith("t1/a/seed1") else 0.99
        path.write_text(json.dumps(m))
    assert main(["report", str(root)]) == 0
    md = (root / "report.md").read_text()
    assert "## Timing" in md and "over 11 runs: min 0.55, median 0.99." in md
    assert "1 run below 0.9" in md and "- `t1/a/seed1`: 0.55" in md
    html = (root / "report.html").read_text()
    assert "<h2>Timing</h2>" in html and "<li><code>t1/a/seed1</code>: 0.55</li>" in html


def test_report_names_the_peftlab_commit_of_its_runs(tmp_path):
    """Runs record the peftlab commit (``versions.peftlab_commit``): one commit is named once; a bench
    resumed across code changes lists each commit with its count; runs without a record say nothing."""
    root = make_bench(tmp_path)
    assert main(["report", str(root)]) == 0 and "peftlab commit" not in (root / "report.md").read_text()
    paths = sorted(root.glob("*/*/seed*/metrics.json"))
    for i, path in enumerate(paths):
        m = json.loads(path.read_text())
        m["versions"] = {"peftlab": "0.1.0", "peftlab_commit": "abc123"}
        path.write_text(json.dumps(m))
    assert main(["report", str(root)]) == 0
    assert "peftlab commit: `abc123` (every run)." in (root / "report.md").read_text()
    m = json.loads(paths[0].read_text())
    m["versions"]["peftlab_commit"] = "def456-dirty"
    paths[0].write_text(json.dumps(m))
    assert main(["report", str(root)]) == 0
    md = (root / "report.md").read_text()
    assert "peftlab commits (the runs differ in code): `abc123` (10 runs), `def456-dirty` (1 run)." in md


def test_publish_copies_the_record_without_weights_and_reports_alike(tmp_path):
    """`peftlab report BENCH --publish DEST`: DEST holds the index and each run's record (no adapter
    weights, no predictions, no run the index does not list), and its report equals the bench's own."""
    root = make_bench(tmp_path / "bench")
    for d in root.glob("*/*/seed*"):
        (d / "adapter").write_bytes(b"\0" * 64)
        (d / "predictions.jsonl").write_text("{}\n")
    (root / "t1" / "a" / "seed0.disturbed").mkdir()  # set aside: not in the index
    (root / "t1" / "a" / "seed0.disturbed" / "metrics.json").write_text("{}")
    dest = tmp_path / "published"
    assert main(["report", str(root), "--publish", str(dest)]) == 0
    assert main(["report", str(root)]) == 0
    assert (dest / "report.md").read_text() == (root / "report.md").read_text()
    assert not list(dest.rglob("adapter")) and not list(dest.rglob("predictions.jsonl"))
    assert not (dest / "t1" / "a" / "seed0.disturbed").exists()
    assert (dest / "t2" / "b" / "seed2" / "status.json").is_file()  # a failed run stays on record
    assert sorted(p.name for p in (dest / "t1" / "a" / "seed0").iterdir()) == [
        "metrics.json", "status.json", "train_log.jsonl"]
    for name in ("loss_curves", "score_vs_params", "score_vs_time", "peak_memory"):
        assert (dest / "plots" / f"{name}.png").is_file()
    assert main(["report", str(root), "--publish", str(root)]) == 2  # never onto the bench itself


def test_ranks_share_ties():
    from peftlab.lab.report.table import rank_values

    assert rank_values({"a": 3.0, "b": 5.0, "c": 3.0, "d": 1.0}) == {"b": 1.0, "a": 2.5, "c": 2.5, "d": 4.0}
    assert rank_values({}) == {}


def _with_rows(root, truth_rate: dict, n=120):
    """Per-row statistics for every finished run of ``make_bench``: on t1 (mean metric), method A gets a
    row right where its difficulty is below its rate; t2's methods share one rate (no true difference)."""
    import numpy as np

    from peftlab.evaluate.rows import mean_rows

    rng = np.random.default_rng(3)
    hard = rng.random(n)
    ids = [f"r{i}" for i in range(n)]
    for m, tasks in SCORES.items():
        for t, seeds in tasks.items():
            for seed, value in enumerate(seeds):
                d = root / t / m.lower() / f"seed{seed}"
                if value is None:
                    continue
                hits = 100.0 * ((hard < truth_rate[(m, t)]) | (rng.random(n) < 0.05))
                score = float(hits.mean())
                metric = "codexglue_bleu" if t == "t1" else "accuracy"
                floors = {f: {metric: mean_rows(100.0 * (hard < 0.3)).to_json()} for f in ("constant", "retrieval", "majority")}
                (d / "row_stats.json").write_text(json.dumps({"version": 1, "tasks": {t: {
                    "rows": ids, "metrics": {metric: mean_rows(hits).to_json()}, "floors": floors}}}))
                metrics = json.loads((d / "metrics.json").read_text())
                metrics["task_metrics"][t][metric] = score
                (d / "metrics.json").write_text(json.dumps(metrics))


def test_best_is_marked_only_where_the_paired_test_finds_it_and_cells_carry_intervals(tmp_path):
    root = make_bench(tmp_path)
    _with_rows(root, {("A", "t1"): 0.8, ("B", "t1"): 0.4, ("A", "t2"): 0.5, ("B", "t2"): 0.5})
    res = collect(root)
    table = main_table(res, None, [])
    a, b = table.rows[:2]
    assert a[1].count("[") == 1  # "mean [lo, hi]"
    lo, hi = (float(x) for x in a[1].split("[")[1].split("]")[0].split(", "))
    mean = float(a[1].split(" [")[0])
    assert lo < mean < hi and hi - lo < 25  # ~120 rows: an interval of a few points around the mean
    assert "(2/3)" in b[2]  # B's t2 lost a seed
    t1, t2 = {c.column: c for c in table.claims}["t1 CodeXGLUE BLEU"], {c.column: c for c in table.claims}["t2 Accuracy"]
    assert t1.best == "A" and t1.real and t1.p_holm < 0.01  # a 40-point true difference is found
    assert not t2.real and t2.p_holm > 0.05  # the same rate: no winner
    assert (0, 1) in table.bold and not any(j == 2 for _, j in table.bold)
    assert table.rows[2][1].endswith("]")  # the constant floor with its interval over the rows
    md = table.markdown()
    assert "95% interval over seeds and the n = 120 test rows" in md
    write_report(root)
    report = (root / "report.md").read_text()
    assert "t1 CodeXGLUE BLEU: A ahead of B" in report and ": real." in report
    assert "t2 Accuracy:" in report and "not distinguishable from chance" in report


def test_a_run_unfit_for_comparison_is_in_no_cell(tmp_path):
    root = make_bench(tmp_path)
    for seed in range(3):  # every A run on t1 was trained with UniPELT's leaking reference gate
        (root / "t1" / "a" / f"seed{seed}" / "config.yaml").write_text("methods:\n- {name: unipelt, r: 4}\n")
    res = collect(root)
    table = main_table(res, None, [])
    assert table.rows[0][1] == "invalid"
    md = table.markdown()
    assert "A: invalid, 3 runs left out (unipelt: trained with the reference gate" in md


def test_damaged_metrics_are_a_missing_result_not_a_traceback(tmp_path):
    from peftlab.lab.rundir import read_metrics

    root = make_bench(tmp_path)
    run = root / "t1" / "a" / "seed0"
    (run / "metrics.json").write_text("[1, 2, 3]")
    assert main(["report", str(root)]) == 0
    md = (root / "report.md").read_text()
    assert "`t1/a/seed0`: damaged (metrics.json is not a JSON object)" in md
    with pytest.raises(RunDirError, match="metrics.json: not a JSON object"):
        read_metrics(run)
    (run / "metrics.json").write_text("{garbage")
    with pytest.raises(RunDirError, match="metrics.json: unreadable"):
        read_metrics(run)


def test_a_contrast_named_in_advance_gets_its_paired_difference_interval_and_p(tmp_path):
    root = make_bench(tmp_path)
    _with_rows(root, {("A", "t1"): 0.8, ("B", "t1"): 0.4, ("A", "t2"): 0.5, ("B", "t2"): 0.5})
    index = json.loads((root / "bench.json").read_text())
    index["report"]["contrasts"] = [["A", "B"]]
    (root / "bench.json").write_text(json.dumps(index))
    write_report(root)
    md = (root / "report.md").read_text()
    section = md.split("## Contrasts")[1].split("\n## ")[0]
    t1 = next(ln for ln in section.splitlines() if ln.startswith("| A − B | t1"))
    t2 = next(ln for ln in section.splitlines() if ln.startswith("| A − B | t2"))
    lo, hi = (float(x) for x in t1.split("[")[1].split("]")[0].split(", "))
    assert 0 < lo < hi and t1.endswith("| yes: A above B |")  # a 40-point difference, paired by row
    assert t2.endswith("| no: not distinguishable from chance |")


def test_difference_interval_by_hand():
    import numpy as np

    from peftlab.evaluate.rows import mean_rows
    from peftlab.lab.report import stats

    a = [mean_rows([1.0, 1.0, 0.0, 1.0])]
    b = [mean_rows([0.0, 1.0, 0.0, 1.0])]
    diff, lo, hi = stats.difference_interval(a, b, n_boot=4000, rng=np.random.default_rng(0))
    assert diff == 0.25
    # the per-row differences are (1, 0, 0, 0): the difference of a resample is (count of row 0) / 4,
    # Binomial(4, 1/4) / 4, so its 2.5% and 97.5% percentiles are 0 and 0.75
    assert (lo, hi) == (0.0, 0.75)
