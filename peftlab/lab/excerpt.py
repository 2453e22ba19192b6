"""A few test rows side by side: the input, the reference and each run's output, under a
comparison's table (``peftlab compare``) and in ``OUT/excerpt.md`` / ``OUT/excerpt.json``.

A table of scores says which method is ahead; a row of outputs says what the scores mean (a model
that writes "Return a list of the same number of the same number …" still scores a few BLEU
points). The rows are fixed — the first ``ROWS`` test rows that every run scored, in the test
split's order — never picked by how the outputs read. A cell shows the input shortened to its
first line (a function's signature) and how many lines follow; ``excerpt.json`` keeps it whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from peftlab.data.textfile import jsonl_lines
from peftlab.lab import rundir

ROWS = 3  # test rows shown
WIDTH = 72  # characters of an input shown in its cell
_NOT_OUTPUT = ("prediction", "reference")  # the other fields of a predictions.jsonl row identify it


def build_excerpt(rows: list[dict], n: int = ROWS) -> dict:
    """The excerpt of a comparison's ``rows`` (each run's metrics with ``method`` and ``run_dir``):
    ``{"runs": [{method, run_dir, decoding}], "rows": [{row, input, reference, outputs}]}``, the
    outputs in the order of ``runs`` (None where a run has no such row)."""
    runs = [{"method": r["method"], "run_dir": r["run_dir"], "decoding": r.get("decoding")} for r in rows]
    preds = [_predictions(Path(r["run_dir"])) for r in rows]
    first = preds[0] if preds else {}
    shared = [k for k in first if all(k in p for p in preds)]
    inputs = _inputs(Path(rows[0]["run_dir"])) if rows else {}
    picked = []
    for key in (shared or list(first))[:n]:
        picked.append({"row": json.loads(key), "input": inputs.get(key), "reference": first[key]["reference"],
                       "outputs": [p[key]["prediction"] if key in p else None for p in preds]})
    return {"runs": runs, "rows": picked}


def excerpt_markdown(excerpt: dict) -> str:
    """The excerpt as a Markdown table (a column per run) and a line saying which rows and decoding."""
    rows, runs = excerpt["rows"], excerpt["runs"]
    if not rows:
        return ""
    kind = "Function" if all("func_name" in r["row"] for r in rows) else "Input"
    lines = ["| " + " | ".join([kind, "Reference", *(_cell(r["method"]) for r in runs)]) + " |",
             "|" + "|".join("---" for _ in range(len(runs) + 2)) + "|"]
    for r in rows:
        cells = [_input_cell(r), _cell(r["reference"]), *(_cell(o) for o in r["outputs"])]
        lines.append("| " + " | ".join(cells) + " |")
    chosen = [f"{r['method']}: {_listed(r['decoding'])}" for r in runs if isinstance(r.get("decoding"), dict)]
    note = (f"\nThe first {len(rows)} test rows (inputs whole in excerpt.json; every row in each run's "
            f"predictions.jsonl).")
    if chosen:
        note += f" Decoding chosen on validation — {'; '.join(chosen)}."
    return "\n".join(lines) + "\n" + note


def head_rows(run_dir: Path, n: int = ROWS) -> str:
    """The first ``n`` prediction rows of each task of a run (as JSONL): what ``HEAD`` holds."""
    path = run_dir / rundir.PREDICTIONS
    if not path.is_file():
        return ""
    kept, per_task = [], {}
    for _, line in jsonl_lines(path.read_text(encoding="utf-8")):
        row = json.loads(line)
        if not _is_row(row):
            continue
        task = row.get("task")
        if per_task.get(task, 0) < n:
            per_task[task] = per_task.get(task, 0) + 1
            kept.append(line)
    return "".join(f"{ln}\n" for ln in kept)


def write_excerpt(out: Path, excerpt: dict) -> None:
    rundir.write_text(out / "excerpt.md", excerpt_markdown(excerpt) + "\n")
    rundir.write_json(out / "excerpt.json", excerpt)


def shorten(text: str, width: int = WIDTH) -> str:
    """A function's signature (decorators left out, a signature over several lines joined), cut to
    ``width``, and how many lines follow; other text: its first line."""
    head, rest = _head(text, width)
    return head + _more(rest)


def _head(text: str, width: int) -> tuple[str, int]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    body = [ln for ln in lines if not ln.startswith("@")] or lines  # decorators say little about what it does
    if not body:
        return "", 0
    end = next((i for i, ln in enumerate(body[:4]) if ln.endswith(":")), 0)  # where the signature closes
    head = " ".join(" ".join(body[: end + 1]).split())
    if len(head) > width:
        head = head[: width - 1].rstrip() + "…"
    return head, len(body) - end - 1


HEAD = "predictions.head.jsonl"  # what a published run keeps of its predictions: the excerpt's rows


def _predictions(run_dir: Path) -> dict[str, dict]:
    """A run's prediction rows by identity (their fields other than the output and the reference);
    a published run's first rows (``HEAD``) where it kept no more."""
    path = run_dir / rundir.PREDICTIONS
    if not path.is_file():
        path = run_dir / HEAD
    if not path.is_file():
        return {}
    rows = [json.loads(line) for _, line in jsonl_lines(path.read_text(encoding="utf-8"))]
    return {_key(r): r for r in rows if _is_row(r)}


def _is_row(row) -> bool:
    """A prediction row (an output and its reference); anything else in the file is not shown."""
    return isinstance(row, dict) and isinstance(row.get("prediction"), str) and isinstance(row.get("reference"), str)


def _key(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if k not in _NOT_OUTPUT}, sort_keys=True, ensure_ascii=False)


def _inputs(run_dir: Path) -> dict[str, str]:
    """The test rows' inputs as a reader sees them (``Example.shown``), by row identity, read again
    from the run's config: predictions.jsonl keeps no inputs. Data that cannot be read any more
    leaves the inputs out; the excerpt must never fail a comparison whose runs are done."""
    from peftlab.errors import PeftlabError
    from peftlab.lab.run import load_run_config
    from peftlab.lab.rundata import load_examples

    try:
        cfg = load_run_config(run_dir)
        test = load_examples(cfg.data, cfg.data.test_split, cfg.eval.max_examples)
    except (PeftlabError, OSError):
        return {}
    multi = len(cfg.data.tasks) > 1
    names = [t.describe() for t in cfg.data.tasks]
    return {_key({**({"task": names[t]} if multi else {}), **e.meta}): e.shown if e.shown is not None else e.source
            for t, e in test}


def _input_cell(row: dict) -> str:
    if row["input"] is None:
        return "–"
    head, rest = _head(row["input"], WIDTH)
    code = f"`{head}`".replace("|", "\\|") if head and "`" not in head else _cell(head)
    return code + _more(rest)


def _cell(text: Optional[str]) -> str:
    if text is None:
        return "–"
    return " ".join(text.split()).replace("|", "\\|") or "(empty)"


def _listed(settings: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def _more(lines: int) -> str:
    return f" … (+{lines} line{'s' if lines > 1 else ''})" if lines else ""
