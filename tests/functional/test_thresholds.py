"""Forgetting levels, p-values and the Benjamini–Hochberg procedure against brute-force definitions."""

from __future__ import annotations

import random

import pytest
import torch

from lightning_unlearn.functional.thresholds import (
    benjamini_hochberg,
    bootstrap_interval,
    empirical_p_values,
    holdout_band,
    holdout_threshold,
)


def quantile_by_hand(values, q):
    """Linear interpolation between order statistics at position q · (n − 1)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def test_levels_are_the_mean_and_the_quantile():
    rng = random.Random(0)
    holdout = [rng.random() for _ in range(37)]
    g = torch.tensor(holdout)
    assert holdout_threshold(g, "mean") == pytest.approx(sum(holdout) / len(holdout), abs=1e-6)
    for q in (0.05, 0.5, 0.9, 0.95):
        assert holdout_threshold(g, "quantile", q) == pytest.approx(quantile_by_hand(holdout, q), abs=1e-6)
    assert holdout_band(g) == pytest.approx((quantile_by_hand(holdout, 0.05), quantile_by_hand(holdout, 0.95)))
    assert holdout_threshold(torch.tensor([0.2, float("nan"), 0.4]), "mean") == pytest.approx(0.3)  # unscored: skipped


def test_bad_levels_are_refused():
    with pytest.raises(ValueError, match="no scored records"):
        holdout_threshold(torch.tensor([]), "mean")
    with pytest.raises(ValueError, match="quantile must be in"):
        holdout_threshold(torch.tensor([0.1]), "quantile", 1.0)
    with pytest.raises(ValueError, match="kind must be"):
        holdout_threshold(torch.tensor([0.1]), "median")
    with pytest.raises(ValueError, match="0 < low < high < 1"):
        holdout_band(torch.tensor([0.1]), (0.9, 0.1))


def test_p_values_count_holdout_records_at_least_as_memorized():
    rng = random.Random(1)
    holdout = [round(rng.random(), 1) for _ in range(20)]  # ties on purpose
    records = [round(rng.random(), 1) for _ in range(15)]
    expected = [(1 + sum(h >= x for h in holdout)) / (1 + len(holdout)) for x in records]
    assert empirical_p_values(torch.tensor(records), torch.tensor(holdout)).tolist() == pytest.approx(expected)


def bh_by_hand(p, alpha):
    m = len(p)
    ordered = sorted(p)
    k = max((i for i in range(1, m + 1) if ordered[i - 1] <= i * alpha / m), default=0)
    cut = ordered[k - 1] if k else -1.0
    return [value <= cut for value in p]


@pytest.mark.parametrize("seed", range(5))
def test_benjamini_hochberg_matches_its_definition(seed):
    rng = random.Random(seed)
    p = [rng.choice([rng.random() * 0.02, rng.random()]) for _ in range(30)]
    for alpha in (0.01, 0.05, 0.2):
        assert benjamini_hochberg(torch.tensor(p, dtype=torch.float64), alpha).tolist() == bh_by_hand(p, alpha)
    with pytest.raises(ValueError, match="alpha"):
        benjamini_hochberg(torch.tensor(p), 0.0)


def test_bootstrap_interval_holds_the_level_narrows_with_size_and_leaves_the_rng_alone():
    rng = random.Random(2)
    state = torch.get_rng_state()
    small = torch.tensor([rng.gauss(0.3, 0.05) for _ in range(16)])
    large = torch.tensor([rng.gauss(0.3, 0.05) for _ in range(1024)])
    for kind in ("mean", "quantile"):
        low, high = bootstrap_interval(small, kind)
        assert low <= holdout_threshold(small, kind) <= high
        large_low, large_high = bootstrap_interval(large, kind)
        assert large_high - large_low < (high - low) / 3  # about 1/sqrt(64) as wide
    assert bootstrap_interval(small) == bootstrap_interval(small.flip(0))  # its own fixed generator; any order
    assert torch.equal(torch.get_rng_state(), state)
