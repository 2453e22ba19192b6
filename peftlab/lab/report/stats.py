"""Intervals and tests for a bench's cells: which differences between methods are real.

A cell is one method on one task: several training seeds, each scored on the same n test rows.
Every metric the report shows is a function of *row statistics* summed over rows
(``peftlab.evaluate.rows``: a run writes them to ``row_stats.json``), so a resample of rows is a
weighted sum of an ``(n, k)`` array, and thousands of resamples cost one matrix product.

* **Interval** (``interval``): a two-level bootstrap (Davison & Hinkley 1997, §3.8): each replicate
  draws the seeds with replacement and the test rows with replacement (the same rows for every
  drawn seed), and averages the drawn seeds' scores. Its 2.5/97.5 percentiles cover both the
  training-seed and the test-sampling noise.
* **Paired test** (``paired_test``): approximate randomisation over test rows (Noreen 1989; the
  significance test of Riezler & Maxwell 2005 for MT metrics): under the null hypothesis that two
  methods' outputs are exchangeable row by row, swap each row's outputs between them with
  probability 1/2 (seed i of one paired with seed i of the other, every seed swapped together) and
  count how often the absolute difference of the seed-averaged scores reaches the observed one.
  Two-sided, with the usual +1 correction: p = (hits + 1) / (trials + 1).
* **Holm** (``holm``): step-down correction of a family of p-values (Holm 1979).
* **Mean ranks across tasks** (``nemenyi``): the Friedman/Nemenyi critical difference of Demšar
  (2006): two methods whose mean ranks differ by less than CD = q_alpha sqrt(k(k+1)/(6N)) are not
  distinguishable.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from peftlab.evaluate.rows import KINDS, RowStats

ALPHA = 0.05
N_BOOT = 2000
N_PERM = 2000


# ------------------------------------------------------------------------------------- bootstrap


def _seed_count(cells: Sequence[Sequence[RowStats]]) -> tuple[int, int]:
    n_rows = {s.stats.shape[0] for cell in cells for s in cell}
    if len(n_rows) != 1:
        raise ValueError(f"cells scored on different numbers of test rows: {sorted(n_rows)}")
    return n_rows.pop(), min(len(c) for c in cells)


def bootstrap(seeds: Sequence[RowStats], *, n_boot: int = N_BOOT, rng: np.random.Generator | None = None,
              row_weights: np.ndarray | None = None, seed_draws: np.ndarray | None = None) -> np.ndarray:
    """(n_boot,) replicates of the seed-averaged metric (two-level: seeds, then rows)."""
    rng = rng or np.random.default_rng(0)
    n, _ = _seed_count([seeds])
    if row_weights is None:
        row_weights = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
    if seed_draws is None:
        seed_draws = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
    per_seed = np.stack([s.score(row_weights) for s in seeds], axis=1)  # (n_boot, seeds)
    return np.take_along_axis(per_seed, seed_draws, axis=1).mean(1)


def interval(seeds: Sequence[RowStats], *, level: float = 0.95, n_boot: int = N_BOOT,
             rng: np.random.Generator | None = None) -> tuple[float, float, float]:
    """(mean over seeds, low, high): the percentile interval of the two-level bootstrap."""
    reps = bootstrap(seeds, n_boot=n_boot, rng=rng)
    mean = float(np.mean([s.score() for s in seeds]))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(reps, [tail, 100 - tail])
    return mean, float(lo), float(hi)


def difference_interval(a: Sequence[RowStats], b: Sequence[RowStats], *, level: float = 0.95, n_boot: int = N_BOOT,
                        rng: np.random.Generator | None = None) -> tuple[float, float, float]:
    """(mean over seeds of a − mean over seeds of b, low, high): the percentile interval of the
    difference under the two-level bootstrap, the same test rows drawn for both (paired by row), the
    seeds of each drawn independently."""
    rng = rng or np.random.default_rng(0)
    n, _ = _seed_count([a, b])
    rows = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
    reps = bootstrap(a, n_boot=n_boot, row_weights=rows, rng=rng) - bootstrap(b, n_boot=n_boot, row_weights=rows, rng=rng)
    diff = float(np.mean([x.score() for x in a]) - np.mean([y.score() for y in b]))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(reps, [tail, 100 - tail])
    return diff, float(lo), float(hi)


def paired_test(a: Sequence[RowStats], b: Sequence[RowStats], *, n_perm: int = N_PERM,
                rng: np.random.Generator | None = None) -> tuple[float, float]:
    """(observed difference of seed-averaged scores a - b, two-sided p-value) by approximate
    randomisation over rows; seeds are paired by position (the first k of each, k the smaller count)."""
    rng = rng or np.random.default_rng(0)
    n, k = _seed_count([a, b])
    if k == 0:
        raise ValueError("a paired test needs at least one seed on each side")
    a, b = list(a)[:k], list(b)[:k]
    observed = float(np.mean([x.score() for x in a]) - np.mean([y.score() for y in b]))
    swap = rng.random((n_perm, n)) < 0.5  # True: this row's outputs change sides
    diffs = np.zeros(n_perm)
    for x, y in zip(a, b):
        if x.stats.shape[1] != y.stats.shape[1]:
            raise ValueError("the two methods' row statistics are of different metrics")
        if x.kind != y.kind:
            raise ValueError("the two methods' row statistics are of different metrics")
        wa_x, wa_y = (~swap).astype(float), swap.astype(float)  # what a' takes from x and from y
        sa = wa_x @ x.stats + wa_y @ y.stats
        sb = wa_y @ x.stats + wa_x @ y.stats
        diffs += KINDS[x.kind](sa) - KINDS[y.kind](sb)
    diffs /= k
    hits = int(np.sum(np.abs(diffs) >= abs(observed) - 1e-12))
    return observed, (hits + 1) / (n_perm + 1)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (monotone, capped at 1)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


# ---------------------------------------------------------------------------------------- ranks


def nemenyi_cd(k: int, n_tasks: int, alpha: float = ALPHA) -> float:
    """Demšar's critical difference for k methods over n_tasks tasks (Nemenyi, two-sided alpha)."""
    from scipy.stats import studentized_range

    if k < 2 or n_tasks < 1:
        return math.inf
    q = studentized_range.ppf(1 - alpha, k, math.inf) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6 * n_tasks))


def indistinguishable_groups(mean_ranks: dict[str, float], cd: float) -> list[list[str]]:
    """Maximal runs of methods (sorted by mean rank) whose ranks lie within ``cd`` of each other,
    as in Demšar's critical-difference diagram; runs contained in a longer run are dropped."""
    names = sorted(mean_ranks, key=mean_ranks.get)
    runs = []
    for i, first in enumerate(names):
        run = [m for m in names[i:] if mean_ranks[m] - mean_ranks[first] < cd]
        if len(run) > 1 and not any(set(run) <= set(r) for r in runs):
            runs.append(run)
    return runs
