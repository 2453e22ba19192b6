"""Intervals and paired tests of the report (peftlab.lab.report.stats) against hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from peftlab.evaluate.metrics import classification_metrics, corpus_bleu
from peftlab.evaluate import rows
from peftlab.lab.report import stats


def test_row_statistics_reproduce_the_metrics_on_any_subset():
    preds = ["return the sum of a and b", "open the file", "a b c d", "compute the mean value", "x"]
    refs = ["return the sum of two numbers", "open a file for reading", "a b c", "compute the mean", "y z"]
    bleu = rows.corpus_bleu_rows(preds, refs)
    for subset in ([0, 1, 2, 3, 4], [0, 3], [1, 1, 4]):
        w = np.bincount(subset, minlength=5).astype(float)[None]
        assert bleu.score(w)[0] == pytest.approx(corpus_bleu([preds[i] for i in subset], [refs[i] for i in subset]))
    predicted, gold = [0, 1, 2, 2, -1, 1], [0, 1, 1, 2, 2, 0]
    f1 = rows.classification_rows(predicted, gold, 3)["macro_f1"]
    assert f1.score() == pytest.approx(classification_metrics(predicted, gold, 3)["macro_f1"])
    w = np.array([[2, 0, 1, 1, 0, 3]], dtype=float)
    expand = [i for i, c in enumerate(w[0]) for _ in range(int(c))]
    assert f1.score(w)[0] == pytest.approx(classification_metrics([predicted[i] for i in expand],
                                                                  [gold[i] for i in expand], 3)["macro_f1"])
    assert rows.mean_rows([1, 0, 1, 1]).score() == pytest.approx(0.75)


def test_bootstrap_by_hand_on_two_rows_and_two_seeds():
    """Every (seed draw, row draw) of a tiny cell enumerated: the replicates' distribution is known."""
    seeds = [rows.mean_rows([0.0, 1.0]), rows.mean_rows([1.0, 1.0])]
    row_weights = np.array([[2, 0], [1, 1], [0, 2]], dtype=float)  # rows (0,0), (0,1), (1,1)
    seed_draws = np.array([[0, 0], [0, 1], [1, 1]])
    reps = [stats.bootstrap(seeds, row_weights=row_weights[[r]], seed_draws=seed_draws[[s]])[0]
            for r, s in itertools.product(range(3), range(3))]
    # seed 0 scores 0, .5, 1 on the three row draws; seed 1 scores 1 always
    assert reps == pytest.approx([0, 0.5, 1, 0.5, 0.75, 1, 1, 1, 1])


def test_interval_covers_the_truth_and_narrows_with_rows():
    rng = np.random.default_rng(1)
    wide = [rows.mean_rows(rng.random(50) < 0.6) for _ in range(3)]
    narrow = [rows.mean_rows(rng.random(2000) < 0.6) for _ in range(3)]
    m1, lo1, hi1 = stats.interval(wide)
    m2, lo2, hi2 = stats.interval(narrow)
    assert lo1 <= m1 <= hi1 and lo2 <= 0.6 <= hi2
    assert (hi2 - lo2) < (hi1 - lo1) / 3
    # binomial sd at n=2000: sqrt(.24/2000) = .011 -> a 95% interval about +-.021 (seed noise adds a little)
    assert 0.03 < hi2 - lo2 < 0.07


def test_paired_test_by_hand_on_three_rows():
    """One seed each, rows where a and b differ: 2 of 3. Under every swap pattern the difference is
    (sum of signed differences) / 3; exactly the patterns with both differing rows unswapped or both
    swapped reach |observed| = 2/3: half of them, so p -> 1/2."""
    a = [rows.mean_rows([1.0, 1.0, 0.0])]
    b = [rows.mean_rows([0.0, 0.0, 0.0])]
    diff, p = stats.paired_test(a, b, n_perm=20000, rng=np.random.default_rng(0))
    assert diff == pytest.approx(2 / 3)
    assert p == pytest.approx(0.5, abs=0.02)


def _cell(truth, rate, rng, seeds=3):
    """Seeds of a method that gets a row right when its difficulty is below ``rate``, or by luck (10%)."""
    return [rows.mean_rows((truth < rate) | (rng.random(len(truth)) < 0.1)) for _ in range(seeds)]


def test_paired_test_finds_true_differences_and_holds_its_level_on_false_ones():
    """Under the null (both methods the same process) it rejects at most ~5% of the time; a 10-point
    difference on 200 rows is found nearly always."""
    rng = np.random.default_rng(7)
    null_p, true_p = [], []
    for _ in range(100):
        truth = rng.random(200)
        null_p.append(stats.paired_test(_cell(truth, 0.55, rng), _cell(truth, 0.55, rng), n_perm=500, rng=rng)[1])
    for _ in range(30):
        truth = rng.random(200)
        d, p = stats.paired_test(_cell(truth, 0.65, rng), _cell(truth, 0.55, rng), n_perm=500, rng=rng)
        assert d > 0
        true_p.append(p)
    assert np.mean(np.array(null_p) < 0.05) <= 0.08
    assert np.mean(np.array(true_p) < 0.05) >= 0.9


def test_holm_by_hand():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_nemenyi_matches_demsar_and_groups():
    # Demšar (2006), Table 5(a): q_0.05 = 2.343 for k = 3, 3.164 for k = 10
    assert stats.nemenyi_cd(3, 1) == pytest.approx(2.343 * np.sqrt(3 * 4 / 6), abs=2e-3)
    assert stats.nemenyi_cd(10, 14) == pytest.approx(3.164 * np.sqrt(10 * 11 / (6 * 14)), abs=2e-3)
    groups = stats.indistinguishable_groups({"a": 1.0, "b": 1.5, "c": 3.0, "d": 3.2}, cd=1.0)
    assert groups == [["a", "b"], ["c", "d"]]
    assert stats.indistinguishable_groups({"a": 1.0, "b": 3.0}, cd=1.0) == []
