"""A bench's results as tables: mean ± std over seeds, the best of each column marked, floors as rows.

``collect(bench_dir)`` reads the index ``peftlab bench`` wrote (``bench.json``) and every run's
``metrics.json`` and ``train_log.jsonl``; ``main_table`` has one row per method and, per task, its
primary metric (or the metrics the spec's ``report.metrics`` names) and then the run's cost columns;
``task_table`` has every metric of one task. A ``Table`` renders to Markdown and to HTML.

* **scores**: the mean over the seeds that finished with its 95% interval over seeds and test rows
  (``peftlab.lab.report.claims``), where the runs kept per-row statistics; otherwise mean ± sample
  std (n − 1). A cell over fewer seeds than the bench has says so (``(2/3)``).
* **best**: a score column's best mean is bold only where a paired test over the same test rows
  finds it ahead of the runner-up (Holm-corrected over the table's columns, p < 0.05): the table
  says which differences are real (``Table.claims``); cost columns (memory, time, loss) bold their
  lowest mean among methods that trained, untested; parameter counts are not marked.
* **invalid runs**: a run whose method configuration is unfit for comparison (UniPELT's reference
  gate reads later tokens) is in no cell; its method's cells say ``invalid`` and a note says why.
* **floors**: the model-free baselines every run records on the same test rows (best constant
  output or majority class, BM25 retrieval: ``peftlab.lab.floors``) are rows; a method whose
  mean does not exceed some floor of that task on that metric is marked ``†``.
* **mean rank**: with two or more task columns, the main table ranks the methods on each per seed
  (1 = best, ties share) and averages a method's ranks over the columns: scores of different
  scales (BLEU, accuracy) cannot be averaged, ranks can (as in Demšar's comparison of classifiers
  over many datasets); mean ± std over seeds.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Optional

from peftlab.lab.report import claims
from peftlab.lab.report.results import Results, Run

BELOW_FLOOR = "†"
# Task metrics: title and format (scores are 0-100 except fractions shown as %)
METRIC_TITLES = {
    "bleu": "BLEU", "codexglue_bleu": "CodeXGLUE BLEU", "rouge_1": "ROUGE-1", "rouge_2": "ROUGE-2",
    "rouge_l": "ROUGE-L", "chrf": "chrF", "exact_match": "Exact match", "f1": "F1", "precision": "Precision",
    "recall": "Recall", "edit_sim": "Edit sim", "accuracy": "Accuracy", "macro_f1": "Macro-F1",
    "distinct_predictions": "Distinct outputs",
}
PERCENT_METRICS = {"distinct_predictions"}  # fractions in [0, 1], shown as percentages
# Run columns: title, format, which way is better (None: not marked)
RUN_COLUMNS = {
    "trainable_params": ("Trainable params", "{:,.0f}", None),
    "trainable_pct": ("Trainable %", "{:.2f}", None),
    "steps": ("Steps", "{:,.0f}", None),
    "batch_size": ("Batch", "{:.0f}", None),
    "final_loss": ("Train loss", "{:.3f}", "low"),
    "eval_loss": ("Val loss", "{:.3f}", "low"),
    "ppl": ("Perplexity", "{:.2f}", "low"),
    "train_seconds": ("Train s", "{:,.1f}", "low"),
    "tokens_per_second": ("Tokens/s", "{:,.0f}", "high"),
    "peak_memory_mib": ("Peak memory MiB", "{:,.0f}", "low"),
}
FLOOR_ROWS = (("constant", "floor: best constant"), ("majority", "floor: majority class"),
              ("retrieval", "floor: BM25 retrieval"))


@dataclass(frozen=True)
class Cell:
    values: tuple[float, ...]  # one per seed that finished

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if self.n >= 2 else None


def cell(runs: list[Run], key: str, subtask: Optional[str] = None, eval_name: Optional[str] = None) -> Cell:
    vals = [r.value(key, subtask, eval_name) for r in runs]
    return Cell(tuple(float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v)))


def fmt_cell(c: Cell, fmt: str, percent: bool = False, expected: Optional[int] = None, spread: bool = True) -> str:
    """``mean ± std`` (``spread=False``: no ± where every seed gave the same value, as counts do)."""
    if c.mean is None:
        return "–"
    show = (lambda v: f"{100 * v:.1f}%") if percent else fmt.format
    text = show(c.mean)
    if c.std is not None and (spread or len(set(c.values)) > 1):
        text += f" ± {show(c.std)}"
    if expected and c.n < expected:
        text += f" ({c.n}/{expected})"
    return text


# ------------------------------------------------------------------------------------- tables


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    bold: set = field(default_factory=set)  # (row, column) of the best cells
    notes: list[str] = field(default_factory=list)
    right: list[bool] = field(default_factory=list)  # numeric columns, right-aligned
    claims: list = field(default_factory=list)  # the score columns' tests (peftlab.lab.report.claims.Claim)
    untested: list[str] = field(default_factory=list)  # score columns no test could be made for

    def markdown(self) -> str:
        def text(i, j, s):
            return f"**{s}**" if (i, j) in self.bold else s

        out = ["| " + " | ".join(self.header) + " |",
               "|" + "|".join("---:" if r else "---" for r in self.right) + "|"]
        out += ["| " + " | ".join(text(i, j, s) for j, s in enumerate(row)) + " |" for i, row in enumerate(self.rows)]
        return "\n".join(out + ([""] + self.notes if self.notes else []))

    def html(self) -> str:
        from html import escape

        def td(i, j, s):
            body = f"<b>{escape(s)}</b>" if (i, j) in self.bold else escape(s)
            return f'<td class="{"num" if self.right[j] else "txt"}">{body}</td>'

        head = "".join(f"<th>{escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(td(i, j, s) for j, s in enumerate(row)) + "</tr>"
                       for i, row in enumerate(self.rows))
        notes = "".join(f"<p class=\"note\">{escape(n)}</p>" for n in self.notes)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


@dataclass(frozen=True)
class Column:
    title: str
    fmt: str
    better: Optional[str]  # "high", "low" or None
    get: Callable[[str], Cell]  # method label -> its cell
    floor: Callable[[str], Optional[float]] = lambda name: None  # floor name -> its value
    percent: bool = False
    score: bool = False  # a task metric (floors compare with it)
    count: bool = False  # the same for every seed by construction (parameters, steps): no ± 0
    by_seed: Optional[Callable[[str, int], Cell]] = None  # (method label, seed) -> that seed's cell
    rows: Callable[[str], Optional[claims.Rows]] = lambda m: None  # a score's per-row statistics, by method
    floor_rows: Callable[[str], Optional[claims.Rows]] = lambda f: None  # ... by floor name

    def get_seed(self, method: str, seed: int) -> Cell:
        return self.by_seed(method, seed) if self.by_seed else Cell(())


def _task_column(res: Results, task: dict, sub: dict, metric: str, titled: bool,
                 eval_name: Optional[str] = None) -> Column:
    floors = res.floors(task["label"], sub["name"], eval_name)
    name = METRIC_TITLES.get(metric, metric)
    where = sub["name"] if len(task["tasks"]) > 1 else task["label"]
    title = f"{where} {name}" if titled else name
    percent = metric in PERCENT_METRICS  # not a score: how many distinct outputs, unmarked
    def rows(m: str):
        return claims.cell_rows([r.row_record(sub["name"], metric, eval_name) for r in res.runs_of(m, task["label"])])

    def floor_rows(f: str):
        first = next((r for r in res.runs if r.task == task["label"] and r.metrics is not None), None)
        return claims.cell_rows([first.row_record(sub["name"], metric, eval_name, floor=f)]) if first else None

    return Column(title, "{:.2f}", None if percent else "high",
                  lambda m: cell(res.runs_of(m, task["label"]), metric, sub["name"], eval_name),
                  lambda f: (floors.get(f) or {}).get(metric), percent, score=not percent,
                  by_seed=lambda m, seed: cell([r for r in res.runs_of(m, task["label"]) if r.seed == seed],
                                               metric, sub["name"], eval_name),
                  rows=rows if not percent else (lambda m: None), floor_rows=floor_rows)


def _rank_column(res: Results, scores: list[Column]) -> Column:
    """Mean rank over the score columns: per seed, the methods ranked on each column (1 = best, ties
    share their mean rank), a method's ranks averaged over the columns; then mean ± std over seeds.
    Scores of different scales (BLEU, accuracy) cannot be averaged; ranks can. A method lacking a
    column's score for a seed has no mean rank for that seed."""
    ranks: dict[str, list[float]] = {m: [] for m in res.methods}
    for seed in res.seeds:
        per_method: dict[str, list[float]] = {m: [] for m in res.methods}
        for c in scores:
            values = {}
            for m in res.methods:
                seed_values = c.get_seed(m, seed).values
                if seed_values:
                    values[m] = seed_values[0]
            for m, r in rank_values(values).items():
                per_method[m].append(r)
        for m, rs in per_method.items():
            if len(rs) == len(scores):
                ranks[m].append(statistics.fmean(rs))
    # not bolded: which mean ranks differ is the critical difference's to say (the table's note)
    return Column("Mean rank", "{:.1f}", None, lambda m: Cell(tuple(ranks[m])))


def rank_values(values: dict[str, float]) -> dict[str, float]:
    """Rank 1 for the highest value; tied values share the mean of the ranks they span."""
    order = sorted(values.items(), key=lambda kv: -kv[1])
    out, i = {}, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and order[j + 1][1] == order[i][1]:
            j += 1
        for k in range(i, j + 1):
            out[order[k][0]] = (i + j) / 2 + 1
        i = j + 1
    return out


def _run_column(res: Results, key: str, task: Optional[str] = None) -> Column:
    title, fmt, better = RUN_COLUMNS[key]
    return Column(title, fmt, better, lambda m: cell(res.runs_of(m, task), key), count=better is None)


def task_score_columns(res: Results, metrics: Optional[list[str]] = None, eval_name: Optional[str] = None) -> list[Column]:
    """Per task, its primary metric's column (or the columns of ``metrics``, those it has)."""
    scores = []
    for task in res.tasks:
        for sub in task["tasks"]:
            wanted = [m for m in metrics if m in sub["metrics"]] if metrics else [sub["primary_metric"]]
            scores += [_task_column(res, task, sub, m, titled=True, eval_name=eval_name) for m in wanted]
    return scores


def main_table(res: Results, metrics: Optional[list[str]] = None, columns: Optional[list[str]] = None,
               eval_name: Optional[str] = None) -> Table:
    """Rows: methods, then floors. Columns: per task its primary metric (or ``metrics``, those it
    has), a mean rank over them, then ``columns`` (run columns, over all of a method's runs). With
    ``eval_name``: the scores of that evaluation (``peftlab.lab.evals``) and their mean rank, no run
    columns (the runs are the same)."""
    scores = task_score_columns(res, metrics, eval_name)
    cols = list(scores)
    ranked = [c for c in scores if c.score]
    if len(ranked) > 1:
        cols.append(_rank_column(res, ranked))
    if eval_name is None:
        cols += [_run_column(res, key) for key in (columns if columns is not None else RUN_COLUMNS)]
    table = _table(res, cols)
    if len(ranked) > 1:
        table.notes.append(f"Mean rank: per seed, the methods ranked on each of the {len(ranked)} task columns "
                           "(1 = best, ties share), averaged over the columns; mean ± std over seeds. "
                           + _rank_note(res, cols[len(scores)], len(ranked)))
    if eval_name is not None:
        edits = ", ".join(f"{k}={v}" for k, v in (res.index.get("evals") or {}).get(eval_name, {}).items())
        table.notes.append(f"{eval_name}: the same trained runs scored on other test rows ({edits}), each "
                           "task decoded as chosen on its validation split; floors on those rows.")
    elif len(res.tasks) > 1 and any(not c.score for c in cols):
        table.notes.append("Cost columns: mean ± std over all of a method's runs (every task and seed); per task in "
                           "the tables below.")
    return table


def _rank_note(res: Results, rank: Column, n_columns: int) -> str:
    """Which mean ranks Demšar's critical difference cannot tell apart."""
    means = {m: rank.get(m).mean for m in res.methods if rank.get(m).mean is not None}
    if len(means) < 2:
        return ""
    cd, groups = claims.rank_groups(means, n_columns)
    if not groups:
        return f"Critical difference {cd:.1f} (Nemenyi, p < 0.05): every mean rank is distinguishable from the others."
    return (f"Critical difference {cd:.1f} (Nemenyi, p < 0.05 over {n_columns} columns): not distinguishable "
            "from each other: " + "; ".join("{" + ", ".join(g) + "}" for g in groups) + ".")


def task_table(res: Results, task: dict, sub: dict, eval_name: Optional[str] = None) -> Table:
    """One (sub)task: every metric it reports, then the run columns of its runs (of evaluation
    ``eval_name``: its metrics only)."""
    cols = [_task_column(res, task, sub, m, titled=False, eval_name=eval_name) for m in sub["metrics"]]
    runs = [_run_column(res, key, task["label"]) for key in (RUN_COLUMNS if eval_name is None else ())]
    cols += [c for c in runs if any(c.get(m).mean is not None for m in res.methods)]  # no empty column
    return _table(res, cols)


def _table(res: Results, cols: list[Column]) -> Table:
    expected = len(res.seeds)
    cells = {m: [c.get(m) for c in cols] for m in res.methods}
    header = ["Method"] + [c.title for c in cols]
    rows, bold, below, n_rows = [], set(), False, set()
    trained = {m for m in res.methods if any((r.value("steps") or 0) > 0 for r in res.runs_of(m))}
    invalid = {m: res.invalid(m) for m in res.methods if res.invalid(m)}
    for m in res.methods:
        row = [m]
        for c, x in zip(cols, cells[m]):
            found = c.rows(m) if c.score and x.mean is not None else None
            if found is not None:
                mean, lo, hi = claims.interval(found)
                text = f"{mean:.2f} [{lo:.2f}, {hi:.2f}]" + (f" ({x.n}/{expected})" if x.n < expected else "")
                n_rows.add(len(found.ids))
            elif x.mean is None and m in invalid:
                text = "invalid"
            else:
                text = fmt_cell(x, c.fmt, c.percent, expected, spread=not c.count)
            floor_values = [v for v in (c.floor(f) for f, _ in FLOOR_ROWS) if v is not None]
            if c.score and x.mean is not None and floor_values and x.mean <= max(floor_values):
                text += f" {BELOW_FLOOR}"
                below = True
            row.append(text)
        rows.append(row)
    tested, untested = [], []
    for j, c in enumerate(cols):
        if c.better is None:
            continue
        pool = {m: cells[m][j].mean for m in res.methods if cells[m][j].mean is not None and (c.score or m in trained)}
        if len(pool) < 2:
            continue
        if not c.score:  # a cost: its lowest mean, untested
            best = (max if c.better == "high" else min)(pool.values())
            bold |= {(res.methods.index(m), j + 1) for m, v in pool.items() if v == best}
            continue
        claim = claims.best_vs_runner_up(c.title, pool, {m: c.rows(m) for m in pool}, c.better == "high")
        if claim is None:
            untested.append(c.title)
        else:
            tested.append((j, claim))
    corrected = claims.holm_corrected([cl for _, cl in tested])
    for (j, _), claim in zip(tested, corrected):
        if claim.real:
            bold.add((res.methods.index(claim.best), j + 1))
    for f, label in FLOOR_ROWS:
        values = [c.floor(f) for c in cols]
        if any(v is not None for v in values):
            rows.append([label] + [_floor_text(c, f, v) for c, v in zip(cols, values)])
    return Table(header, rows, bold, _notes(res, below, bool(tested or untested), n_rows, invalid),
                 [False] + [True] * len(cols), claims=corrected, untested=untested)


def _floor_text(c: Column, name: str, value: Optional[float]) -> str:
    if value is None:
        return "–"
    if c.percent:
        return f"{100 * value:.1f}%"
    found = c.floor_rows(name) if c.score else None
    if found is None:
        return c.fmt.format(value)
    _, lo, hi = claims.interval(found)
    return f"{c.fmt.format(value)} [{lo:.2f}, {hi:.2f}]"


def _notes(res: Results, below: bool, scores: bool, n_rows: set, invalid: dict) -> list[str]:
    expected = len(res.seeds)
    notes = []
    if below:
        notes.append(f"{BELOW_FLOOR}: the mean does not exceed a floor of its task on that metric (model-free "
                     "baselines on the same test rows: best constant output or majority class, BM25 retrieval).")
    seeds = f"{expected} seed{'s' if expected > 1 else ''} ({', '.join(map(str, res.seeds))})"
    if n_rows:
        notes.append(f"Scores: mean over {seeds} [95% interval over seeds and the n = "
                     f"{', '.join(map(str, sorted(n_rows)))} test rows, two-level bootstrap]; floors: [interval over "
                     "the test rows]. Bold: the best mean of a column where a paired test over the same test rows "
                     "finds it ahead of the runner-up (approximate randomisation, Holm-corrected over the table's "
                     f"columns, p < {claims.ALPHA}); no bold where it does not. Other columns: mean ± sample std.")
    else:
        notes.append(f"Mean ± sample std over {seeds}." + (" No per-row statistics were kept, so no difference "
                                                          "is tested and no best score is marked." if scores else ""))
    for m, runs in invalid.items():
        notes.append(f"{m}: invalid, {len(runs)} run{'s' if len(runs) != 1 else ''} left out ({runs[0].invalid}).")
    return notes
