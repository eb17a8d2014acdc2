"""The retrain verdict's arithmetic against hand-computed values: the KS statistic, its exact p-value (a count of
lattice paths), the critical value, and the per-attack counts."""

from __future__ import annotations

import math
import random

import pytest

from lightning_unlearn.functional.verdict import (
    ks_critical_value,
    ks_p_value,
    ks_statistic,
    ks_test,
    retrain_verdict,
)


def test_ks_statistic_is_the_largest_gap_between_the_empirical_cdfs_with_ties_on_both_sides():
    # a: 0.1, 0.2, 0.2, 0.4; b: 0.2, 0.3. CDFs after each value: 0.1 -> 1/4 vs 0; 0.2 -> 3/4 vs 1/2;
    # 0.3 -> 3/4 vs 1; 0.4 -> 1 vs 1. The largest gap is 1/4 (at 0.1, at 0.2 and at 0.3).
    assert ks_statistic([0.1, 0.2, 0.2, 0.4], [0.2, 0.3]) == 0.25
    assert ks_statistic([0.5, 0.5], [0.5]) == 0.0
    assert ks_statistic([0.1, 0.2], [0.3, 0.4]) == 1.0


def test_exact_p_values_count_lattice_paths_by_hand():
    # n = m = 3, D = 1: of the C(6, 3) = 20 orders of the six values, 2 put one sample wholly first.
    assert ks_p_value(1.0, 3, 3) == pytest.approx(0.1, abs=1e-12)
    # n = 2, m = 1, D = 1: of the 3 orders (aab, aba, baa), aab and baa reach |i/2 - j/1| = 1.
    assert ks_p_value(1.0, 2, 1) == pytest.approx(2 / 3, abs=1e-12)
    # n = m = 2, D = 1: of the C(4, 2) = 6 orders, aabb and bbaa; D = 1/2: every order reaches it.
    assert ks_p_value(1.0, 2, 2) == pytest.approx(1 / 3, abs=1e-12)
    assert ks_p_value(0.5, 2, 2) == pytest.approx(1.0, abs=1e-12)
    assert ks_p_value(0.0, 5, 7) == 1.0


def test_the_critical_value_is_the_large_sample_formula():
    assert ks_critical_value(32, 32) == pytest.approx(math.sqrt(-math.log(0.025) * 64 / 2048), rel=1e-12)
    assert ks_critical_value(32, 32) == pytest.approx(0.3395, abs=1e-4)
    assert ks_critical_value(32, 32, alpha=0.01) > ks_critical_value(32, 32)


def test_exact_and_asymptotic_p_values_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for n, m in [(32, 32), (16, 64), (7, 13), (200, 300), (4000, 4000)]:
        a = [round(rng.random(), 2) for _ in range(n)]
        b = [round(rng.random() * 1.2, 2) for _ in range(m)]
        ours, theirs = ks_test(a, b), stats.ks_2samp(a, b)
        assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-12)
        if n * m <= 10_000_000:  # both exact
            assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-12)
        else:  # ours asymptotic: within a few percent of the exact
            assert ours.p_value == pytest.approx(theirs.pvalue, rel=0.1, abs=1e-4)


def test_the_verdict_counts_both_models_and_is_two_sided():
    above_like = retrain_verdict([0.1, 0.5, 0.2, 0.3], [0.2, 0.1, 0.6, 0.25], threshold=0.4)
    assert (above_like["above"], above_like["retrain_above"]) == (1, 1) and above_like["indistinguishable"]
    # Pushed far below the retrain (every record under every retrain record): as detectable as far above.
    below = retrain_verdict([0.0] * 8, [0.3] * 8, threshold=0.4)
    assert below["above"] == below["retrain_above"] == 0 and below["ks"] == 1.0 and not below["indistinguishable"]
    assert below["p_value"] == pytest.approx(2 / math.comb(16, 8), abs=1e-12)
    assert retrain_verdict({1: 0.5}, {1: 0.5}, threshold=0.5, inclusive=True)["above"] == 1


def test_bad_samples_are_refused():
    with pytest.raises(ValueError, match="empty"):
        ks_test([], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        ks_test([float("nan")], [0.1])
