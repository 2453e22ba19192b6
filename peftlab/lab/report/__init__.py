"""``peftlab report BENCH_DIR``: a bench's results as ``report.md`` and a self-contained ``report.html``.

The Markdown links the figures in ``BENCH_DIR/plots/``; the HTML embeds them (base64 PNG), so it
can be mailed or attached as one file. Both hold the main table (methods × tasks, mean ± std over
seeds, floors as rows), the figures (``peftlab.lab.report.plots``), one table per task with all its
metrics, the batch sizes used, and the runs that are missing or failed. What the main table shows
comes from the spec's ``report`` section (``peftlab.lab.bench.spec.ReportSpec``).
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from peftlab.lab.report.results import Results, collect
from peftlab.lab.report.table import Table, main_table, task_table

__all__ = ["Results", "collect", "main_table", "task_table", "write_report"]


def write_report(bench_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``bench_dir``; returns their paths."""
    from peftlab.lab import rundir
    from peftlab.lab.report.plots import PLOTS, score_vs_params

    bench_dir = Path(bench_dir)
    res = collect(bench_dir)
    spec = res.index.get("report") or {}
    mains = [(f"Results ({e})" if e else "Results", main_table(res, spec.get("metrics"), spec.get("columns"), e))
             for e in [None, *res.eval_names]]
    tasks = [(f"{t['label']}" + (f": {s['name']}" if len(t["tasks"]) > 1 else "") + (f" ({e})" if e else ""),
              task_table(res, t, s, e))
             for e in [None, *res.eval_names] for t in res.tasks for s in t["tasks"]]
    plots = {name: draw(res, bench_dir / "plots" / f"{name}.png") for name, draw in PLOTS.items()}
    for e in res.eval_names:  # the same figure on each evaluation's rows
        plots[f"score_vs_params.{e}"] = score_vs_params(res, bench_dir / "plots" / f"score_vs_params.{e}.png", e)
    sections = mains + [(f"Task: {name}", table) for name, table in tasks]
    rundir.write_text(bench_dir / "report.md", _markdown(res, sections, plots, bench_dir))
    rundir.write_text(bench_dir / "report.html", _html(res, sections, plots))
    return {"report.md": bench_dir / "report.md", "report.html": bench_dir / "report.html", **plots}


CAPTIONS = {
    "loss_curves": "Training loss (mean over seeds; band: lowest to highest seed)",
    "score_vs_params": "Primary metric vs trainable parameters (dotted: methods that train nothing; dashed: floors)",
    "score_vs_time": "Primary metric vs training time (dashed: floors)",
    "peak_memory": "Peak memory per method",
}


def _caption(name: str) -> str:
    """A figure's caption; ``score_vs_params.NAME`` is that figure on evaluation NAME's rows."""
    base, _, eval_name = name.partition(".")
    return CAPTIONS[base] + (f", on the {eval_name} evaluation's test rows" if eval_name else "")


def _about(res: Results) -> list[str]:
    ix = res.index
    budget = ix.get("budget") or {}
    mode = (f"equal steps ({budget['steps']:,} optimizer steps)" if budget.get("steps")
            else f"equal wall-clock time ({budget.get('seconds')} s of training)")
    fit = ix.get("batch_size") or {}
    batch = "fitted to free memory per method × task (below)" if fit.get("fit") else "the base config's"
    lines = [f"Spec: `{ix.get('spec')}`; budget: {mode}; batch size: {batch}; seeds: "
             f"{', '.join(map(str, res.seeds))}.",
             f"Device: {ix.get('device', '?')} ({ix.get('cpu_capability', '?')}); started {ix.get('started', '?')}"
             + (f", last run {ix['updated']}" if ix.get("updated") else "") + "."]
    precisions = sorted({r.metrics.get("precision") for r in res.runs
                         if r.metrics and isinstance(r.metrics.get("precision"), str)})
    if precisions:
        names = {"bf16": "bf16 autocast", "fp16": "fp16 autocast", "no": "fp32"}
        lines[-1] += f" Precision: {', '.join(names.get(p, p) for p in precisions)}."
    code = _code_line(res)
    if code:
        lines.append(code)
    workers = ix.get("workers") or {}
    if (workers.get("runs") or 1) > 1:
        threads = f", {workers['threads_each']} CPU thread{'s' if workers['threads_each'] != 1 else ''} each" \
            if workers.get("threads_each") else ""
        lines.append(f"{workers['runs']} runs side by side{threads}: each run's time and tokens/s are on its share "
                     f"of the machine.")
    return lines


def _code_line(res: Results) -> str:
    """Which peftlab made the runs: one commit, or each commit with its count (a bench resumed
    across code changes mixes them), from each run's recorded versions (runs made before peftlab
    recorded its commit, or by an installed copy, are counted as not recorded)."""
    from collections import Counter

    commits = Counter((r.metrics.get("versions") or {}).get("peftlab_commit") or "not recorded"
                      for r in res.runs if r.metrics)
    if not commits or set(commits) == {"not recorded"}:
        return ""
    if len(commits) == 1:
        return f"peftlab commit: `{next(iter(commits))}` (every run)."
    return ("peftlab commits (the runs differ in code): "
            + ", ".join(f"`{c}` ({n} run{'s' if n != 1 else ''})" for c, n in commits.most_common()) + ".")


SHARED_CPU = 0.9  # a CPU run's cpu_share below this: other work shared its cores (quiet runs read ~0.99)


def _time_split(res: Results) -> list[str]:
    """Where the runs' time went (metrics.json ``seconds``): training, decoding selection on
    validation, test scoring, floors; evaluation's share (selection + test) per method."""
    parts = ("train", "select", "test", "perplexity", "floors")
    timed = [r for r in res.runs if r.metrics and isinstance(r.metrics.get("seconds"), dict)]
    if not timed:
        return []
    total = {p: sum(r.metrics["seconds"].get(p) or 0.0 for r in timed) for p in parts}
    spent = sum(total.values()) or 1.0
    out = [f"Where the time of {len(timed)} runs went (metrics.json `seconds`): "
           + ", ".join(f"{p} {100 * v / spent:.0f}%" for p, v in total.items() if v) + "."]
    by_method: dict[str, list[float]] = {}
    for r in timed:
        if r.metrics["seconds"].get("eval_share") is not None:
            by_method.setdefault(r.method, []).append(r.metrics["seconds"]["eval_share"])
    if by_method:
        out.append("Evaluation (selection + test) as a share of each run's train + scoring time, median per method: "
                   + "; ".join(f"{m} {100 * sorted(v)[len(v) // 2]:.0f}%" for m, v in by_method.items()) + ".")
    return out


def _timing(res: Results) -> list[str]:
    """The CPU share of the runs' timed steps, and the runs whose time columns shared the cores."""
    shares = [(r, r.metrics["cpu_share"]) for r in res.runs if r.metrics and r.metrics.get("cpu_share") is not None]
    if not shares:
        return _time_split(res)
    values = sorted(v for _, v in shares)
    out = _time_split(res) + [f"CPU share of the timed training steps (process CPU time / wall time x threads; ~1: the run had "
           f"the cores to itself), over {len(values)} runs: min {values[0]:.2f}, median "
           f"{values[len(values) // 2]:.2f}."]
    low = [(r, v) for r, v in shares if v < SHARED_CPU]
    if low:
        out.append(f"{len(low)} run{'s' if len(low) != 1 else ''} below {SHARED_CPU}: other work shared the "
                   f"cores, and the train-time and tokens/s figures are slower than the method's:")
        out += [f"- `{r.dir.relative_to(res.root)}`: {v:.2f}" for r, v in low]
    return out


def _status(res: Results) -> list[str]:
    missing = [r for r in res.runs if r.metrics is None]
    if not missing:
        return []
    out = [f"{len(missing)} of {len(res.runs)} runs have no results:"]
    for r in missing:
        error = ""
        status = r.dir / "status.json"
        if status.is_file():
            try:
                error = json.loads(status.read_text()).get("error") or ""
            except ValueError:
                pass
        out.append(f"- `{r.dir.relative_to(res.root)}`: {r.state}" + (f" ({error})" if error else ""))
    return out


def _contrast_lines(res: Results) -> list[str]:
    """The spec's ``report.contrasts``: each pair's paired difference on every task's score columns
    (and each evaluation's), with interval, p and Holm-corrected p."""
    from peftlab.lab.report import claims
    from peftlab.lab.report.table import task_score_columns

    pairs = (res.index.get("report") or {}).get("contrasts") or []
    if not pairs:
        return []
    found, missing = [], []
    for e in [None, *res.eval_names]:
        for col in task_score_columns(res, (res.index.get("report") or {}).get("metrics"), e):
            for a, b in pairs:
                name = col.title + (f" ({e})" if e else "")
                c = claims.contrast(a, b, name, col.rows(a), col.rows(b))
                if c is None:
                    missing.append(f"{a} − {b} on {name}")
                else:
                    found.append(c)
    return claims.contrast_lines(found, missing) if found or missing else []


def _example_lines(res: Results) -> list[str]:
    """For each generation task, its first test rows side by side: the input, the reference and each
    method's output (its lowest seed's run), as ``peftlab compare`` shows them (``peftlab.lab.excerpt``)."""
    from peftlab.lab.excerpt import build_excerpt, excerpt_markdown

    out = []
    for t in res.tasks:
        if all(s["kind"] != "generation" for s in t["tasks"]):
            continue
        rows = []
        for m in res.methods:
            done = sorted(res.runs_of(m, t["label"]), key=lambda r: r.seed)
            if done:
                rows.append({"method": m, "run_dir": str(done[0].dir), "decoding": done[0].metrics.get("decoding")})
        excerpt = build_excerpt(rows) if rows else {"rows": []}
        if excerpt["rows"]:
            out += [f"### {t['label']}", "", excerpt_markdown(excerpt).replace(
                "(inputs whole in excerpt.json; every row in each run's predictions.jsonl)",
                "of the lowest seed of each method"), ""]
    return out


def _tuning_lines(res: Results) -> list[str]:
    """Each tuned row's grid with its validation scores, the rate chosen and why, and what tuning cost."""
    tuning = res.index.get("tuning")
    if not tuning:
        return []
    out = [f"Learning rates chosen on the validation split, {tuning['runs']} run{'s' if tuning['runs'] != 1 else ''} "
           f"per method and task (equal effort), seed {tuning['seed']}, "
           + (f"{tuning['steps']:,} steps each" if tuning.get("steps") else "the bench's budget each")
           + "; then every seed at the chosen rate.", "",
           "| Task | Method | Learning rate: validation score (loss) | Chosen | Chosen by | Tuning s |",
           "|---|---|---|---:|---|---:|"]
    total_runs, total_s = 0, 0.0
    for t in res.tasks:
        for m in res.index["methods"]:
            path = res.root / t["dir"] / m["dir"] / "tuning.json"
            if not path.is_file():
                continue
            choice = json.loads(path.read_text())
            tried = []
            for lr, r in zip(choice["grid"], choice["results"]):
                if r is None or r.get("score") is None:
                    tried.append(f"{lr:g}: failed")
                else:
                    loss = f" ({r['eval_loss']:.3f})" if r.get("eval_loss") is not None else ""
                    tried.append(f"{lr:g}: {r['score']:.2f}{loss}")
            total_runs += choice["tuning_runs"]
            total_s += choice["tuning_seconds"]
            out.append(f"| {t['label']} | {m['label']} | {'; '.join(tried)} | {choice['chosen']:g} | "
                       f"{choice['chosen_by']} | {choice['tuning_seconds']:,.0f} |")
    out.append("")
    out.append(f"Tuning cost: {total_runs} runs, {total_s / 3600:.2f} h of training.")
    return out


def _batch_lines(res: Results) -> list[str]:
    if not (res.index.get("batch_size") or {}).get("fit"):
        return []
    out = ["| Task | Method | Batch | How |", "|---|---|---:|---|"]
    for t in res.tasks:
        for m in res.index["methods"]:
            path = res.root / t["dir"] / m["dir"] / "batch_fit.json"
            if path.is_file():
                fit = json.loads(path.read_text())
                out.append(f"| {t['label']} | {m['label']} | {fit['batch_size']} | {fit.get('how', '')} |")
    return out


def _last_results(sections: list[tuple[str, Table]]) -> int:
    """The plots follow the results tables (the test split's, then each evaluation's)."""
    return max(i for i, (title, _) in enumerate(sections) if title.startswith("Results"))


def _words(title: str, table: Table) -> list[str]:
    """Under a results table: which differences its tests call real, in words."""
    if not title.startswith("Results") or not (table.claims or table.untested):
        return []
    from peftlab.lab.report.claims import in_words

    return ["What the tests say (each column's best mean against its runner-up):",
            *in_words(table.claims, table.untested)]


def _markdown(res: Results, sections: list[tuple[str, Table]], plots: dict, root: Path) -> str:
    parts = [f"# {res.title}", "", *_about(res), ""]
    last = _last_results(sections)
    for i, (title, table) in enumerate(sections):
        parts += [f"## {title}", "", table.markdown(), ""]
        words = _words(title, table)
        if words:
            parts += [*words, ""]
        if i == last:
            for name, path in plots.items():
                parts += [f"![{_caption(name)}]({path.relative_to(root)})", f"*{_caption(name)}*", ""]
    for title, lines in (("Contrasts", _contrast_lines(res)), ("Examples", _example_lines(res)),
                         ("Learning rates", _tuning_lines(res)),
                         ("Batch sizes", _batch_lines(res)),
                         ("Timing", _timing(res)), ("Missing runs", _status(res))):
        if lines:
            parts += [f"## {title}", "", *lines, ""]
    return "\n".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}.note{font-size:12px;color:#555;margin:2px 0}
figure{margin:1em 0}figcaption{font-size:12px;color:#555}img{max-width:100%}code{background:#f3f3f3}"""


def _html(res: Results, sections: list[tuple[str, Table]], plots: dict) -> str:
    about = "".join(f"<p>{_inline(line)}</p>" for line in _about(res))
    body = [f"<h1>{escape(res.title)}</h1>", about]
    last = _last_results(sections)
    for i, (title, table) in enumerate(sections):
        body += [f"<h2>{escape(title)}</h2>", table.html()]
        words = _words(title, table)
        if words:
            body += [f"<p>{_inline(words[0])}</p><ul>"] + [f"<li>{_inline(w[2:])}</li>" for w in words[1:]] + ["</ul>"]
        if i == last:
            for name, path in plots.items():
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{escape(name)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{escape(_caption(name))}</figcaption></figure>")
    examples = _example_lines(res)
    if examples:
        body.append("<h2>Examples</h2>")
        body += [_markdown_block_html(block) for block in "\n".join(examples).split("### ")[1:]]
    tuning = _tuning_lines(res)
    if tuning:
        rows = [line.strip("|").split(" | ") for line in tuning if line.startswith("| ") and "---" not in line][1:]
        table = Table(["Task", "Method", "Learning rate: validation score (loss)", "Chosen", "Chosen by", "Tuning s"],
                      [[c.strip() for c in r] for r in rows], right=[False, False, False, True, False, True])
        body += ["<h2>Learning rates</h2>", f"<p>{_inline(tuning[0])}</p>", table.html(), f"<p>{_inline(tuning[-1])}</p>"]
    batch = _batch_lines(res)
    if batch:
        rows = [line.strip("|").split(" | ") for line in batch[2:]]
        table = Table(["Task", "Method", "Batch", "How"], [[c.strip() for c in r] for r in rows],
                      right=[False, False, True, False])
        body += ["<h2>Batch sizes</h2>", table.html()]
    timing = _timing(res)
    if timing:
        body += ["<h2>Timing</h2>"] + [f"<p>{_inline(line)}</p>" for line in timing if not line.startswith("- ")]
        if any(line.startswith("- ") for line in timing):
            body += ["<ul>"] + [f"<li>{_inline(line[2:])}</li>" for line in timing if line.startswith("- ")] + ["</ul>"]
    status = _status(res)
    if status:
        body += ["<h2>Missing runs</h2>", f"<p>{escape(status[0])}</p><ul>"]
        body += [f"<li>{_inline(s[2:])}</li>" for s in status[1:]] + ["</ul>"]
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{escape(res.title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def _markdown_block_html(block: str) -> str:
    """One "### title" block of Markdown (a table and notes) as HTML."""
    title, *lines = block.splitlines()
    table = [ln.strip().strip("|").split(" | ") for ln in lines if ln.startswith("|") and "---" not in ln]
    notes = [ln for ln in lines if ln.strip() and not ln.startswith("|")]
    html = f"<h3>{escape(title)}</h3>"
    if table:
        html += Table([c.strip() for c in table[0]], [[c.strip() for c in r] for r in table[1:]],
                      right=[False] * len(table[0])).html()
    return html + "".join(f"<p class=\"note\">{_inline(n)}</p>" for n in notes)


def _inline(text: str) -> str:
    """Markdown's inline code (`x`) as HTML, the rest escaped."""
    parts = text.split("`")
    return "".join(f"<code>{escape(p)}</code>" if i % 2 else escape(p) for i, p in enumerate(parts))
