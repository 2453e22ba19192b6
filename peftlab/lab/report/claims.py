"""What a bench's tables may claim: an interval for every score, "best" only where a test says so.

* **Interval**: each score cell is the mean over seeds with its 95% two-level bootstrap interval
  (seeds and test rows: ``peftlab.lab.report.stats.interval``), from the runs' ``row_stats.json``;
  a floor's interval is over the test rows (it has no seeds).
* **Best**: in each score column, the best mean is compared with the runner-up's by the paired
  approximate-randomisation test over the same test rows (``stats.paired_test``); the p-values of all
  the columns a table shows are Holm-corrected together, and the best is marked only where the
  corrected p < 0.05. Where a column's runs lack per-row statistics (runs made before they were
  kept), no test is possible and no best is marked.
* **Mean ranks**: methods whose mean ranks are within Demšar's critical difference of each other are
  not distinguishable (``stats.nemenyi_cd``, ``stats.indistinguishable_groups``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from peftlab.evaluate.rows import RowStats
from peftlab.lab.report import stats

ALPHA = stats.ALPHA


@dataclass(frozen=True)
class Rows:
    """The per-row statistics of one cell (a method, or a floor) on one column: one per seed."""

    ids: tuple[str, ...]  # the test rows, in order (every seed's must be the same)
    seeds: tuple[RowStats, ...]


def cell_rows(records: Sequence[Optional[tuple[list, RowStats]]]) -> Optional[Rows]:
    """A cell's ``Rows`` from each seed's ``(row ids, RowStats)``; None if any seed lacks them or the
    seeds were scored on different rows."""
    if not records or any(r is None for r in records):
        return None
    ids = {tuple(r[0]) for r in records}
    if len(ids) != 1:
        return None
    return Rows(ids.pop(), tuple(r[1] for r in records))


@dataclass(frozen=True)
class Claim:
    """The test of a column's best mean against its runner-up."""

    column: str
    best: str
    runner_up: str
    difference: float  # best - runner-up, in the column's units
    p: float  # two-sided, approximate randomisation over the rows
    p_holm: float = 1.0  # Holm-corrected over the table's columns

    @property
    def real(self) -> bool:
        return self.p_holm < ALPHA


def interval(rows: Rows) -> tuple[float, float, float]:
    return stats.interval(list(rows.seeds))


def best_vs_runner_up(column: str, means: dict[str, float], rows: dict[str, Optional[Rows]],
                      higher_is_better: bool = True) -> Optional[Claim]:
    """The column's best and runner-up by mean and their paired test; None when fewer than two
    methods have a mean, or the two lack comparable per-row statistics."""
    ranked = sorted(means, key=means.get, reverse=higher_is_better)
    if len(ranked) < 2:
        return None
    best, second = ranked[0], ranked[1]
    a, b = rows.get(best), rows.get(second)
    if a is None or b is None or a.ids != b.ids:
        return None
    diff, p = stats.paired_test(list(a.seeds), list(b.seeds))
    return Claim(column, best, second, diff if higher_is_better else -diff, p)


def holm_corrected(claims: list[Claim]) -> list[Claim]:
    adjusted = stats.holm([c.p for c in claims])
    return [Claim(c.column, c.best, c.runner_up, c.difference, c.p, q) for c, q in zip(claims, adjusted)]


def in_words(claims: list[Claim], untested: list[str]) -> list[str]:
    """Which differences between the best and the runner-up are real, one line a column."""
    out = []
    for c in claims:
        verdict = ("real" if c.real else "not distinguishable from chance")
        out.append(f"- {c.column}: {c.best} ahead of {c.runner_up} by {c.difference:.2f} (paired test over the "
                   f"same test rows, p = {c.p:.3f}, Holm-corrected {c.p_holm:.3f}): {verdict}.")
    out += [f"- {name}: no test (its runs kept no per-row statistics), so no best is marked." for name in untested]
    return out


def rank_groups(mean_ranks: dict[str, float], n_columns: int) -> tuple[float, list[list[str]]]:
    """Demšar's critical difference for these methods over ``n_columns`` columns, and the groups of
    methods it cannot tell apart."""
    cd = stats.nemenyi_cd(len(mean_ranks), n_columns)
    return cd, stats.indistinguishable_groups(mean_ranks, cd)


@dataclass(frozen=True)
class Contrast:
    """A difference named in advance (``report.contrasts``): A − B on one column, paired by row."""

    a: str
    b: str
    column: str
    difference: float
    low: float
    high: float
    p: float
    p_holm: float = 1.0


def contrast(a: str, b: str, column: str, rows_a: Optional[Rows], rows_b: Optional[Rows]) -> Optional[Contrast]:
    """The paired difference of two methods on one column with its 95% interval and two-sided
    p-value; None when either lacks per-row statistics of the same rows."""
    if rows_a is None or rows_b is None or rows_a.ids != rows_b.ids:
        return None
    diff, lo, hi = stats.difference_interval(list(rows_a.seeds), list(rows_b.seeds))
    _, p = stats.paired_test(list(rows_a.seeds), list(rows_b.seeds))
    return Contrast(a, b, column, diff, lo, hi, p)


def contrast_lines(found: list[Contrast], missing: list[str]) -> list[str]:
    """The contrasts as a table, Holm-corrected together, and a sentence per contrast saying whether
    the difference holds."""
    adjusted = stats.holm([c.p for c in found])
    lines = ["| Contrast | Column | Difference [95% interval] | p | Holm p | Holds? |", "|---|---|---:|---:|---:|---|"]
    for c, q in zip(found, adjusted):
        holds = ("yes: " + (f"{c.a} above {c.b}" if c.difference > 0 else f"{c.b} above {c.a}")) if q < ALPHA else \
            "no: not distinguishable from chance"
        lines.append(f"| {c.a} − {c.b} | {c.column} | {c.difference:+.2f} [{c.low:+.2f}, {c.high:+.2f}] | "
                     f"{c.p:.3f} | {q:.3f} | {holds} |")
    lines += ["", f"Paired over the same test rows (two-level bootstrap for the interval, approximate "
                  f"randomisation for p), Holm-corrected over the {len(found)} contrasts × columns shown."]
    lines += [f"- {m}: no per-row statistics, no contrast." for m in missing]
    return lines

