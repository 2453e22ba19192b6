"""Speed results as Markdown tables, and the ratios peftlab / reference (and compare / peftlab)."""

from __future__ import annotations

import statistics

from peftlab.lab.speed import machine
from peftlab.lab.speed.impls import COMPARE

REFERENCES = ("peft", "hf", "hf-stock")


def times_key(row: dict) -> str:
    """The prefix of a row's time fields: ``step_s`` (a train step) or ``seconds`` (an inference call)."""
    return "seconds" if row.get("kind") == "inference" else "step_s"


def _ratio(row: dict, other: dict) -> tuple[float, float]:
    """``row``'s tokens/s over ``other``'s: from the two medians, and the same ratio rep by rep (both
    timed back to back), then the median: a burst of load from elsewhere moves both calls of a rep,
    so this is the steadier figure."""
    key = times_key(row) + "_all"
    return row["tokens_per_s"] / other["tokens_per_s"], statistics.median(
        [b / a for a, b in zip(row[key], other[key])])


def add_ratios(rows: list[dict]) -> None:
    """For every peftlab row: tokens/s and peak memory over the reference's (and the compiled one's);
    for a ``compare`` row also its tokens/s over the case's peftlab row's (``vs_peftlab``)."""
    by_key = {(r["case"], r["precision"], r.get("phase"), r["impl"]): r for r in rows}
    for r in rows:
        if not r["impl"].startswith("peftlab"):
            continue
        at = (r["case"], r["precision"], r.get("phase"))
        for ref in REFERENCES:
            for suffix, key in (("", "vs_reference"), ("+compile", "vs_reference_compiled")):
                other = by_key.get((*at, ref + suffix))
                if other and other.get("tokens_per_s") and r.get("tokens_per_s"):
                    r[key], r[key + "_paired"] = _ratio(r, other)
                if suffix == "" and other and other.get("memory_peak_bytes") and r.get("memory_peak_bytes"):
                    r["memory_vs_reference"] = r["memory_peak_bytes"] / other["memory_peak_bytes"]
        ours = by_key.get((*at, "peftlab"))
        if r["impl"].startswith(COMPARE) and r.get("tokens_per_s") and ours and ours.get("tokens_per_s"):
            r["vs_peftlab"], r["vs_peftlab_paired"] = _ratio(r, ours)


def _gib(n) -> str:
    return f"{n / 2**30:.2f}" if n else "–"


def _pair(r: dict, key: str) -> str:
    """A ratio as the tables show it: from the medians / paired."""
    return f"{r[key]:.2f} / {r[key + '_paired']:.2f}" if key in r else ""


def _row(r: dict, compare: bool) -> str:
    case = f"{r['case']} ({r['phase']})" if r.get("phase") else r["case"]
    if "tokens_per_s" not in r:
        cells = [case, r["precision"], r["impl"], r["batch"], *["–"] * (6 if compare else 5),
                 f"{r['trainable_params']:,}", r.get("error") or "not timed"]
        return "| " + " | ".join(cells) + " |"
    ratio = _pair(r, "vs_reference")
    if "vs_reference_compiled" in r:
        ratio += f" ({_pair(r, 'vs_reference_compiled')})"
    mem = _gib(r.get("memory_peak_bytes"))
    if "memory_vs_reference" in r:
        mem += f" ({r['memory_vs_reference']:.2f}×)"
    loss = f"{r['init_loss']:.4f}" if r.get("init_loss") is not None else ""
    if r.get("same_tokens") is not None:
        loss = f"{r['same_tokens']:.0%}"
    key = times_key(r)
    median, q1, q3, low, high = (r[f"{key}_{stat}"] * 1e3 for stat in ("median", "q1", "q3", "min", "max"))
    cells = [case, r["precision"], r["impl"], r["batch"], f"{median:,.0f}",
             f"{q1:,.0f}–{q3:,.0f} ({low:,.0f}–{high:,.0f})", f"{r['tokens_per_s']:,.0f}", ratio,
             *([_pair(r, "vs_peftlab")] if compare else []),
             mem, f"{r['trainable_params']:,}", loss]
    return "| " + " | ".join(cells) + " |"


def _table(rows: list[dict], unit: str, check: str) -> list[str]:
    """One table of train steps or inference calls: the reference's ratio, and where a case has
    ``compare`` rows, theirs over the case's peftlab row's."""
    mem_kind = next((r["memory_kind"] for r in rows if r.get("memory_kind")), None)
    compare = any(r["impl"].startswith(COMPARE) for r in rows)
    return [f"| case | precision | impl | batch | {unit} ms (median) | q1–q3 (min–max) ms | tokens/s "
            "| × ref: medians / paired (× compiled ref) " + ("| × peftlab: medians / paired " if compare else "")
            + f"| peak GiB{' (' + mem_kind + ')' if mem_kind else ''} | trainable | {check} |",
            "|---|---|---|---|---:|---:|---:|---:|" + ("---:|" if compare else "") + "---:|---:|---:|",
            *[_row(r, compare) for r in rows]]


def table(result: dict) -> str:
    """The results as Markdown, with the machine they were taken on."""
    rows = [r for r in result["rows"] if r.get("kind", "train") == "train"]
    inference = [r for r in result["rows"] if r.get("kind") == "inference"]
    gen = [r for r in result["rows"] if r.get("kind") == "generate"]
    lines = [f"Measured on {machine.short(result['machine'])}; {result['warmup']} warm-up + {result['reps']} timed "
             f"steps per implementation (unless a case sets its own), interleaved. `{result['command']}`", "",
             "× ref: peftlab's tokens/s over the reference's, from the two medians, and paired: the median over "
             "repetitions of the two steps timed back to back.", ""]
    if rows:
        lines += _table(rows, "step", "init loss")
        opts = [f"`{r['case']}` {r['impl']}: {', '.join(f'{k}={v}' for k, v in r['options'].items())}"
                for r in rows if r["impl"].startswith("peftlab") and r.get("options") and r["precision"] == rows[0]["precision"]]
        if opts:
            lines += ["", "peftlab's `train` options (the rest at their defaults): " + "; ".join(opts) + "."]
    if inference:
        lines += ["", "Inference: a teacher-forced forward pass over the batch, and greedy generation of exactly "
                  "the new tokens (tokens/s: the batch's tokens, or the tokens generated).", "",
                  *_table(inference, "call", "loss / same tokens as peftlab")]
    if gen:
        from peftlab.lab.speed.generate import table as generate_table

        lines += ["", generate_table(gen)]
    return "\n".join(lines)


def dry_table(rows: list[dict]) -> str:
    lines = ["dry run (meta device): specs, methods, peft configs and batches check out", "",
             "| case | impl | batch | trainable | base weights GiB |", "|---|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['impl']} | {r.get('batch', '')} | {r.get('trainable_params', 0):,} | "
                     f"{_gib(r.get('weights_bytes'))} |")
    return "\n".join(lines)
