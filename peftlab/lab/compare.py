"""Comparisons: many runs, one table. ``peftlab compare configs/papers/seed000 --out runs/seed000``.

Each config trains into ``OUT/<config name>``; a run already complete there is reused and one
interrupted there (same config) is resumed, so an interrupted comparison picks up where it stopped.
One comparison owns ``OUT`` at a time (``peftlab.lab.rundir.acquire``): a second one into the same
``--out`` is refused, where it would retrain, set aside and overwrite the same runs. The table
goes to the terminal and to ``OUT/results.md`` / ``results.json``, and a figure to
``OUT/results.png``; under it, a few test rows side by side — input, reference, each run's output —
go to ``OUT/excerpt.md`` / ``excerpt.json`` too (``peftlab.lab.excerpt``). Each run trains in a fresh
process (``peftlab.lab.child``; ``isolate=False``: in this one, one after another), so the peak-memory
column is each run's own. The task metrics shown are those the runs have; the floors the runs recorded
(best constant or majority class, BM25 retrieval: ``peftlab.lab.floors``) are rows of the same
table, and a method that does not beat every floor of its task is marked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from peftlab.data.textfile import jsonl_lines
from peftlab.lab import rundir
from peftlab.errors import ConfigError, PeftlabError
from peftlab.lab.excerpt import build_excerpt, excerpt_markdown, write_excerpt
from peftlab.lab.run import same_config

HEAD = [
    ("method", "Method", "{}"),
    ("trainable_params", "Trainable params", "{:,}"),
    ("trainable_pct", "Trainable %", "{:.2f}"),
]
# task metrics: a table shows those its rows have, in this order
METRICS = [
    ("bleu", "BLEU", "{:.2f}"),
    ("codexglue_bleu", "CodeXGLUE BLEU", "{:.2f}"),
    ("rouge_1", "ROUGE-1", "{:.2f}"),
    ("rouge_2", "ROUGE-2", "{:.2f}"),
    ("rouge_l", "ROUGE-L", "{:.2f}"),
    ("chrf", "chrF", "{:.2f}"),
    ("exact_match", "Exact match", "{:.2f}"),
    ("f1", "F1", "{:.2f}"),
    ("edit_sim", "Edit sim", "{:.2f}"),
    ("accuracy", "Accuracy", "{:.2f}"),
    ("macro_f1", "Macro-F1", "{:.2f}"),
    ("distinct_predictions", "Distinct outputs", "{:.0%}"),
]
TAIL = [
    ("steps", "Steps", "{}"),
    ("train_seconds", "Train s", "{:.1f}"),
    ("tokens_per_second", "Tokens/s", "{:,.0f}"),
    ("final_loss", "Final loss", "{:.3f}"),
    ("eval_loss", "Val loss", "{:.3f}"),
    ("ppl", "Perplexity", "{:.2f}"),  # causal runs with eval.perplexity
    ("peak_memory_mib", "Peak memory MiB", "{:,.0f}"),
]
COLUMNS = HEAD + METRICS + TAIL
BELOW_FLOOR = " †"  # marks a method that does not beat every floor of its task ("Above floors: no †")
_FLOOR_NAMES = {"constant": "best constant", "majority": "majority class", "retrieval": "BM25 retrieval"}


def columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The table's columns: the fixed ones, the task metrics some row has, and whether a method
    beats its task's floors when the runs recorded them."""
    floors = [("above_floors", "Above floors", "{}")] if any("beats_floors" in r for r in rows) else []
    tail = [c for c in TAIL if c[0] not in OPTIONAL or any(r.get(c[0]) is not None for r in rows)]
    return HEAD + [c for c in METRICS if any(c[0] in r for r in rows)] + floors + tail


def _above(r: dict):
    if "beats_floors" not in r:
        return None
    return "yes" if all(r["beats_floors"].values()) else "no" + BELOW_FLOOR


def floor_rows(rows: list[dict]) -> list[dict]:
    """Table rows for the floors the runs recorded (``metrics.json["floors"]``), each distinct one once."""
    out, seen = [], set()
    for r in rows:
        for task, floors in (r.get("floors") or {}).items():
            for name, f in floors.items():
                if not isinstance(f, dict):
                    continue
                key = (task, name, json.dumps(f, sort_keys=True))
                if key in seen:
                    continue
                seen.add(key)
                label = f"floor: {_FLOOR_NAMES.get(name, name)}"
                if "prediction" in f:
                    label += f' "{f["prediction"]}"'
                out.append({**f, "method": label, "floor": name, "task": task})
    return out
OPTIONAL = {"eval_loss", "ppl", "peak_memory_mib"}  # shown only when some row has them


def expand(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.glob("*.yaml"))
            if not found:
                raise ConfigError(f"{p}: directory holds no *.yaml configs")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"{p}: no such config file or directory")
    return out


def run_names(paths: Sequence[Path]) -> list[str]:
    """Each config's run directory name: its file's stem, or ``<folder>-<stem>`` where two configs
    share a stem (``mini-t5/ia3.yaml`` and ``mini-llama/ia3.yaml``); two that would still share a name
    (the same file given twice) are refused: their runs would overwrite each other."""
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}-{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"configs {', '.join(str(p) for p in paths if p.stem in {t.split('-')[-1] for t in twice})} "
                          f"would share the run directory {twice[0]!r}; give each config once, or rename one")
    return names


def compare(configs: Sequence[Path], out: Path, *, overrides: Sequence[str] = (), progress: bool = True,
            isolate: bool = True) -> list[dict]:
    from peftlab.config import load_config
    from peftlab.schema import RunConfig

    paths = expand(configs)
    loaded = [(p, load_config(RunConfig, p, overrides)) for p in paths]  # fail fast on any bad config
    names = run_names(paths)
    rundir.make_dir(out, "--out")
    with rundir.owned(out), rundir.stop_on_signals():  # one comparison per --out; SIGTERM lets go of it
        rows = []
        for (path, cfg), name in zip(loaded, names):
            run_dir = out / name
            done = rundir.read_status(run_dir).get("state") == "complete" and same_config(run_dir, cfg)
            metrics = (_run_in_a_process(path, overrides, run_dir, progress) if isolate and not done
                       else _run(cfg, run_dir, progress))  # (a complete run is only read)
            rows.append(_row(metrics, path, run_dir))
        floors = floor_rows(rows)
        table = markdown_table(rows + floors)
        print(table)
        excerpt = build_excerpt(rows)
        if excerpt["rows"]:
            print("\n" + excerpt_markdown(excerpt))
        meta = _meta(overrides)
        used = ", ".join(sorted({_PRECISION_NAMES[r["precision"]] for r in rows if r.get("precision")})) or "unrecorded"
        where = f"{meta['device']} ({meta['cpu_capability']}), {used}, {meta['date']}"
        rundir.write_text(out / "results.md", f"{table}\n\n{meta['command']}  \n{where}\n")
        rundir.write_json(out / "results.json", {"meta": meta, "rows": rows, "floors": floors})
        plot(rows + floors, out / "results.png")
        write_excerpt(out, excerpt)
    return rows


_PRECISION_NAMES = {"bf16": "bf16 autocast", "fp16": "fp16 autocast", "no": "fp32"}


def _row(metrics: dict, path: Path, run_dir: Path) -> dict:
    peak = metrics.get("peak_memory_bytes")
    return dict(metrics, config=str(path), run_dir=str(run_dir), peak_memory_mib=peak / 2**20 if peak else None)


def _run(cfg, run_dir: Path, progress: bool) -> dict:
    """The metrics of ``cfg`` in ``run_dir``: reused when complete, resumed when interrupted with
    the same config, else trained afresh (a failed or different attempt is kept aside)."""
    from peftlab.lab.run import resume_run, train_run

    state = rundir.read_status(run_dir).get("state")
    if state == "complete" and same_config(run_dir, cfg):
        return _backfill(rundir.read_metrics(run_dir), run_dir)
    if state in ("interrupted", "running") and same_config(run_dir, cfg):
        return resume_run(run_dir, progress=progress)  # refused if its process still runs
    if run_dir.exists():  # a failed or different attempt (an edited config): keep it aside, never delete it
        with rundir.owned(run_dir):  # refused while a live process writes it
            pass
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.incomplete-{rundir.now().replace(':', '')}"))
    return train_run(cfg, run_dir, progress=progress)


class CompareError(PeftlabError):
    """A run of a comparison failed in its own process."""


def _run_in_a_process(path: Path, overrides: Sequence[str], run_dir: Path, progress: bool) -> dict:
    """``_run`` in a child process (``python -m peftlab.lab.compare``); its metrics, or its error raised."""
    from peftlab.lab.child import in_a_process

    outcome = in_a_process("peftlab.lab.compare", [str(path), str(run_dir), json.dumps(list(overrides)),
                                             "1" if progress else "0"], run_dir.parent / f".{run_dir.name}.result.json")
    if outcome["state"] == "interrupted":
        raise KeyboardInterrupt(outcome.get("error") or "interrupted")
    if outcome["state"] != "complete":
        raise CompareError(f"{path}: {outcome.get('error')}")
    return outcome["metrics"]


def _child(argv: list[str]) -> int:
    """``python -m peftlab.lab.compare CONFIG RUN_DIR OVERRIDES PROGRESS RESULT``: one run of a comparison."""
    from peftlab.lab.child import child_main
    from peftlab.config import load_config
    from peftlab.schema import RunConfig

    path, run_dir, overrides, progress, result = argv

    def work(show_progress: bool) -> dict:
        cfg = load_config(RunConfig, Path(path), json.loads(overrides))
        return {"state": "complete", "metrics": _run(cfg, Path(run_dir), show_progress)}

    return child_main(result, progress, work)


def _meta(overrides: Sequence[str]) -> dict:
    from peftlab.device import hardware
    from peftlab.lab.env import command_line
    from peftlab.provenance import versions

    return {"command": command_line("peftlab.lab.compare.compare"), "overrides": list(overrides), **hardware(), "versions": versions(),
            "date": rundir.now()}


def _backfill(metrics: dict, run_dir: Path) -> dict:
    """Fields added to metrics.json after a run was made, computed from the files it kept."""
    preds = run_dir / rundir.PREDICTIONS
    if "distinct_predictions" not in metrics and preds.exists():
        outs = [json.loads(line)["prediction"] for _, line in jsonl_lines(preds.read_text(encoding="utf-8"))]
        metrics = dict(metrics, distinct_predictions=len(set(outs)) / max(len(outs), 1))
    return metrics


def markdown_table(rows: list[dict]) -> str:
    cols = columns(rows)
    head = "| " + " | ".join(title for _, title, _ in cols) + " |"
    rule = "|" + "|".join("---" if key == "method" else "---:" for key, _, _ in cols) + "|"
    lines = [head, rule]
    for r in rows:
        r = dict(r, above_floors=_above(r))
        cells = [fmt.format(r[key]) if r.get(key) is not None else "–" for key, _, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.get("beats_floors") and not all(r["beats_floors"].values()) for r in rows):
        metrics = sorted({f["metric"] for r in rows for f in (r.get("floors") or {}).values()})
        lines.append(f"\n†: does not beat every floor on {', '.join(metrics)} (model-free baselines on the same rows)")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Each task metric per method (floors included), with trainable parameters (log scale) beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [(key, title) for key, title, _ in METRICS if key != "distinct_predictions" and any(key in r for r in rows)]
    names = [r["method"] if len(r["method"]) < 40 else r["method"][:37] + "..." for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    x = list(range(len(rows)))
    w = 0.8 / max(len(metrics), 1)
    for i, (key, label) in enumerate(metrics):
        offset = (i - (len(metrics) - 1) / 2) * w
        ax1.bar([j + offset for j in x], [r.get(key) or 0 for r in rows], w, label=label)
    ax1.set_xticks(x, names, rotation=20, ha="right")
    ax1.set_ylabel("score")
    if metrics:
        ax1.legend()
    methods = [r for r in rows if "trainable_params" in r]
    counts = [r["trainable_params"] for r in methods]
    ax2.bar(range(len(methods)), [max(c, 1) for c in counts], color="gray")
    for j, c in enumerate(counts):
        ax2.annotate(f"{c:,}", (j, max(c, 1)), ha="center", va="bottom", fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xticks(range(len(methods)), [r["method"] for r in methods], rotation=20, ha="right")
    ax2.set_ylabel("trainable parameters")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_results(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["rows"]


if __name__ == "__main__":
    import sys

    sys.exit(_child(sys.argv[1:]))
