"""A bench's figures (matplotlib, Agg): loss curves, score vs trainable parameters, score vs train
time, peak memory. Each function draws one PNG from ``peftlab.lab.report.results.Results`` and returns
its path; scores are each task's primary metric, mean over seeds with the std as error bars, and
the task's floors as dashed lines (a method below one learned less than a model-free baseline).
Score vs parameters is drawn again for each evaluation of the bench (``evals:``), on its rows.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Optional

from peftlab.lab.report.results import Results
from peftlab.lab.report.table import FLOOR_ROWS, METRIC_TITLES, cell


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(plt, n: int, width: float = 5.0, height: float = 3.6):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _subtasks(res: Results) -> list[tuple[dict, dict]]:
    return [(t, s) for t in res.tasks for s in t["tasks"]]


def _colors(plt, methods: list[str]) -> dict:
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_curves(res: Results, path: Path) -> Path:
    """Training loss per logged step, one panel per task: the mean over seeds, the band spanning
    the seeds' lowest and highest."""
    plt = _plt()
    fig, axes = _grid(plt, len(res.tasks))
    colors = _colors(plt, res.methods)
    for ax, task in zip(axes, res.tasks):
        for m in res.methods:
            by_step: dict[int, list[float]] = {}
            for r in res.runs_of(m, task["label"]):
                for row in r.log:
                    if isinstance(row.get("loss"), (int, float)):
                        by_step.setdefault(int(row["step"]), []).append(float(row["loss"]))
            if not by_step:
                continue
            steps = sorted(by_step)
            mean = [statistics.fmean(by_step[s]) for s in steps]
            ax.plot(steps, mean, label=m, color=colors[m], lw=1.4)
            if any(len(by_step[s]) > 1 for s in steps):
                ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps],
                                color=colors[m], alpha=0.15, lw=0)
        ax.set_title(task["label"])
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _save(plt, fig, path)


def _legend(fig, axes) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        axes[0].legend([handles[lab] for lab in labels], labels, fontsize=7, loc="best")


def _score_vs(res: Results, path: Path, key: str, xlabel: str, log_x: bool, eval_name: Optional[str] = None) -> Path:
    plt = _plt()
    subs = _subtasks(res)
    fig, axes = _grid(plt, len(subs))
    colors = _colors(plt, res.methods)
    for ax, (task, sub) in zip(axes, subs):
        metric = sub["primary_metric"]
        for m in res.methods:
            runs = res.runs_of(m, task["label"])
            y, x = cell(runs, metric, sub["name"], eval_name), cell(runs, key)
            if y.mean is None or x.mean is None:
                continue
            if log_x and x.mean <= 0:  # nothing trained (zero-shot): a level, not a point
                ax.axhline(y.mean, color=colors[m], ls=":", lw=1.2, label=m)
                continue
            ax.errorbar([x.mean], [y.mean], yerr=[y.std or 0.0], xerr=[x.std or 0.0] if not log_x else None,
                        fmt="o", color=colors[m], label=m, capsize=3, ms=6)
        floors = res.floors(task["label"], sub["name"], eval_name)
        for name, label in FLOOR_ROWS:
            if name in floors and metric in floors[name]:
                ax.axhline(floors[name][metric], color="gray", ls="--", lw=1)
                ax.annotate(label.replace("floor: ", ""), (0.01, floors[name][metric]),
                            xycoords=("axes fraction", "data"),
                            fontsize=7, color="gray", va="bottom")
        if log_x:
            ax.set_xscale("log")
        ax.set_title(sub["name"] if len(task["tasks"]) > 1 else task["label"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(METRIC_TITLES.get(metric, metric))
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes)
    return _save(plt, fig, path)


def score_vs_params(res: Results, path: Path, eval_name: Optional[str] = None) -> Path:
    """Scores of the run's own test split, or of evaluation ``eval_name`` (``peftlab.lab.evals``)."""
    return _score_vs(res, path, "trainable_params", "trainable parameters (log)", log_x=True, eval_name=eval_name)


def score_vs_time(res: Results, path: Path) -> Path:
    return _score_vs(res, path, "train_seconds", "training time (s)", log_x=False)


def peak_memory(res: Results, path: Path) -> Path:
    """Peak memory of each method's runs (mean over tasks and seeds, std as the error bar)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(res.methods) + 1.2))
    colors = _colors(plt, res.methods)
    cells = [cell(res.runs_of(m), "peak_memory_mib") for m in res.methods]
    y = list(range(len(res.methods)))
    ax.barh(y, [c.mean or 0 for c in cells], xerr=[c.std or 0 for c in cells],
            color=[colors[m] for m in res.methods], capsize=3)
    for i, c in enumerate(cells):
        if c.mean:
            ax.annotate(f"{c.mean:,.0f}", (c.mean + (c.std or 0), i), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=7)
    ax.set_yticks(y, res.methods, fontsize=8)
    ax.invert_yaxis()
    kinds = {r.metrics.get("peak_memory_kind") for r in res.runs if r.metrics}
    what = {"cuda_max_allocated": "GPU memory allocated", "cpu_max_rss": "process RSS"}
    ax.set_xlabel("peak memory (MiB; " + ", ".join(what.get(k, str(k)) for k in sorted(kinds, key=str)) + ")")
    ax.grid(alpha=0.3, axis="x")
    return _save(plt, fig, path)


PLOTS = {"loss_curves": loss_curves, "score_vs_params": score_vs_params, "score_vs_time": score_vs_time,
         "peak_memory": peak_memory}
