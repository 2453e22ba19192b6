"""Comparisons: many runs, one table. ``peftlab compare configs/seed000 --out runs/seed000``.

Each config trains into ``OUT/<config name>``; a run already complete there is reused, so an
interrupted comparison picks up where it stopped. The table goes to the terminal and to
``OUT/results.md`` / ``results.json``, and a figure to ``OUT/results.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from peftlab import rundir
from peftlab.errors import ConfigError

COLUMNS = [
    ("method", "Method", "{}"),
    ("trainable_params", "Trainable params", "{:,}"),
    ("trainable_pct", "Trainable %", "{:.2f}"),
    ("bleu", "BLEU", "{:.2f}"),
    ("codexglue_bleu", "CodeXGLUE BLEU", "{:.2f}"),
    ("rouge_l", "ROUGE-L", "{:.2f}"),
    ("distinct_predictions", "Distinct outputs", "{:.0%}"),
    ("steps", "Steps", "{}"),
    ("train_seconds", "Train s", "{:.1f}"),
    ("tokens_per_second", "Tokens/s", "{:,.0f}"),
    ("final_loss", "Final loss", "{:.3f}"),
    ("eval_loss", "Val loss", "{:.3f}"),
    ("ppl", "Perplexity", "{:.2f}"),  # causal runs with eval.perplexity
    ("peak_memory_mib", "Peak memory MiB", "{:,.0f}"),
]
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


def compare(configs: Sequence[Path], out: Path, *, overrides: Sequence[str] = (), progress: bool = True) -> list[dict]:
    from peftlab.config import load_config
    from peftlab.run import train_run
    from peftlab.schema import RunConfig

    paths = expand(configs)
    loaded = [(p, load_config(RunConfig, p, overrides)) for p in paths]  # fail fast on any bad config
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path, cfg in loaded:
        run_dir = out / path.stem
        if rundir.read_status(run_dir).get("state") == "complete":
            metrics = _backfill(rundir.read_metrics(run_dir), run_dir)
        else:
            if run_dir.exists():  # an interrupted or failed attempt: keep it aside, never delete it
                run_dir.rename(run_dir.with_name(f"{run_dir.name}.incomplete-{rundir.now().replace(':', '')}"))
            metrics = train_run(cfg, run_dir, progress=progress)
        rows.append(dict(metrics, config=str(path), run_dir=str(run_dir),
                         peak_memory_mib=metrics.get("peak_memory_bytes", 0) / 2**20 or None))
    table = markdown_table(rows)
    print(table)
    meta = _meta(overrides)
    rundir.write_text(out / "results.md", f"{table}\n\n{meta['command']}  \n{meta['device']}, {meta['date']}\n")
    rundir.write_json(out / "results.json", {"meta": meta, "rows": rows})
    plot(rows, out / "results.png")
    return rows


def _meta(overrides: Sequence[str]) -> dict:
    import shlex
    import sys

    from peftlab.env import device_name, versions

    argv = sys.argv if sys.argv and sys.argv[0].endswith("peftlab") else []
    command = "peftlab " + " ".join(shlex.quote(a) for a in argv[1:]) if argv else "peftlab.bench.compare"
    return {"command": command, "overrides": list(overrides), "device": device_name(), "versions": versions(),
            "date": rundir.now()}


def _backfill(metrics: dict, run_dir: Path) -> dict:
    """Fields added to metrics.json after a run was made, computed from the files it kept."""
    preds = run_dir / rundir.PREDICTIONS
    if "distinct_predictions" not in metrics and preds.exists():
        outs = [json.loads(line)["prediction"] for line in preds.read_text().splitlines() if line.strip()]
        metrics = dict(metrics, distinct_predictions=len(set(outs)) / max(len(outs), 1))
    return metrics


def markdown_table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if c[0] not in OPTIONAL or any(r.get(c[0]) is not None for r in rows)]
    head = "| " + " | ".join(title for _, title, _ in cols) + " |"
    rule = "|" + "|".join("---" if key == "method" else "---:" for key, _, _ in cols) + "|"
    lines = [head, rule]
    for r in rows:
        cells = [fmt.format(r[key]) if r.get(key) is not None else "–" for key, _, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """BLEU, CodeXGLUE BLEU and ROUGE-L per method, with trainable parameters (log scale) beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    x = list(range(len(rows)))
    w = 0.27
    for i, (key, label) in enumerate([("bleu", "BLEU"), ("codexglue_bleu", "CodeXGLUE BLEU"), ("rouge_l", "ROUGE-L")]):
        ax1.bar([j + (i - 1) * w for j in x], [r[key] for r in rows], w, label=label)
    ax1.set_xticks(x, names, rotation=20, ha="right")
    ax1.set_ylabel("score")
    ax1.legend()
    counts = [r["trainable_params"] for r in rows]
    ax2.bar(x, [max(c, 1) for c in counts], color="gray")
    for j, c in enumerate(counts):
        ax2.annotate(f"{c:,}", (j, max(c, 1)), ha="center", va="bottom", fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xticks(x, names, rotation=20, ha="right")
    ax2.set_ylabel("trainable parameters")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_results(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["rows"]
