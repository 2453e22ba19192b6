"""Speed results as a Markdown table, and the ratios peftlab / reference."""

from __future__ import annotations

import statistics

from peftlab.lab.speed import machine


def add_ratios(rows: list[dict]) -> None:
    """For every peftlab row: tokens/s and peak memory over the reference's (and the compiled one's)."""
    by_key = {(r["case"], r["precision"], r["impl"]): r for r in rows}
    for r in rows:
        if not r["impl"].startswith("peftlab"):
            continue
        for ref in ("peft", "hf"):
            for suffix, key in (("", "vs_reference"), ("+compile", "vs_reference_compiled")):
                other = by_key.get((r["case"], r["precision"], ref + suffix))
                if other and other.get("tokens_per_s") and r.get("tokens_per_s"):
                    r[key] = r["tokens_per_s"] / other["tokens_per_s"]
                    # the same ratio rep by rep (both timed back to back), then the median: a burst of
                    # load from elsewhere moves both steps of a rep, so this is the steadier figure
                    paired = [b / a for a, b in zip(r["step_s_all"], other["step_s_all"])]
                    r[key + "_paired"] = statistics.median(paired)
                if suffix == "" and other and other.get("memory_peak_bytes") and r.get("memory_peak_bytes"):
                    r["memory_vs_reference"] = r["memory_peak_bytes"] / other["memory_peak_bytes"]


def _gib(n) -> str:
    return f"{n / 2**30:.2f}" if n else "–"


def _row(r: dict) -> str:
    if "tokens_per_s" not in r:
        cells = [r["case"], r["precision"], r["impl"], r["batch"], "–", "–", "–", "–", "–",
                 f"{r['trainable_params']:,}", r.get("error") or "not timed"]
        return "| " + " | ".join(cells) + " |"
    ratio = f"{r['vs_reference']:.2f} / {r['vs_reference_paired']:.2f}" if "vs_reference" in r else ""
    if "vs_reference_compiled" in r:
        ratio += f" ({r['vs_reference_compiled']:.2f} / {r['vs_reference_compiled_paired']:.2f})"
    mem = _gib(r.get("memory_peak_bytes"))
    if "memory_vs_reference" in r:
        mem += f" ({r['memory_vs_reference']:.2f}×)"
    loss = f"{r['init_loss']:.4f}" if r.get("init_loss") is not None else ""
    cells = [r["case"], r["precision"], r["impl"], r["batch"], f"{r['step_s_median'] * 1e3:,.0f}",
             f"{r['step_s_q1'] * 1e3:,.0f}–{r['step_s_q3'] * 1e3:,.0f} ({r['step_s_min'] * 1e3:,.0f}–"
             f"{r['step_s_max'] * 1e3:,.0f})", f"{r['tokens_per_s']:,.0f}", ratio or "", mem,
             f"{r['trainable_params']:,}", loss]
    return "| " + " | ".join(cells) + " |"


def table(result: dict) -> str:
    """The results as Markdown, with the machine they were taken on."""
    rows = [r for r in result["rows"] if r.get("kind", "train") == "train"]
    gen = [r for r in result["rows"] if r.get("kind") == "generate"]
    mem_kind = next((r["memory_kind"] for r in rows if r.get("memory_kind")), None)
    lines = [f"Measured on {machine.short(result['machine'])}; {result['warmup']} warm-up + {result['reps']} timed "
             f"steps per implementation, interleaved. `{result['command']}`", "",
             "× ref: peftlab's tokens/s over the reference's, from the two medians, and paired: the median over "
             "repetitions of the two steps timed back to back.", ""]
    if rows:
        lines += [
            "| case | precision | impl | batch | step ms (median) | q1–q3 (min–max) ms | tokens/s "
            "| × ref: medians / paired (× compiled ref) "
            f"| peak GiB{' (' + mem_kind + ')' if mem_kind else ''} | trainable | init loss |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
            *[_row(r) for r in rows],
        ]
        opts = [f"`{r['case']}` {r['impl']}: {', '.join(f'{k}={v}' for k, v in r['options'].items())}"
                for r in rows if r["impl"].startswith("peftlab") and r.get("options") and r["precision"] == rows[0]["precision"]]
        if opts:
            lines += ["", "peftlab's `train` options (the rest at their defaults): " + "; ".join(opts) + "."]
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
