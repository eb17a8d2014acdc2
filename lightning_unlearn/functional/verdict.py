"""The retrain verdict: is the unlearned model's forget set like that of a model that never saw it?

A model that never saw the forget records (the exact retrain, trained without them) is the reference under every
attack: fine-tuning on texts of the same kind raises the g of records never seen too, so "forgotten" is judged
against what the retrain shows *under the same attack*, not against a fixed count. Per attack the verdict counts
the forget records above the threshold for each model and compares the two models' forget g with a two-sample
Kolmogorov–Smirnov test (TOFU's "forget quality" is the same test on another statistic). The test is two-sided:
a model pushed far *below* the retrain is as detectable as one above it. Pure functions on numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import NamedTuple

#: n · m up to which the p-value is exact (a lattice-path count, about a second), else asymptotic
EXACT_LIMIT = 10_000_000


class KSTest(NamedTuple):
    """A two-sample Kolmogorov–Smirnov test: ``statistic`` D = ``sup_x |F_a(x) − F_b(x)|`` in [0, 1], its two-sided
    ``p_value`` under "same distribution", and the ``critical_value`` of D at the test's α."""

    statistic: float
    p_value: float
    critical_value: float


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """D = ``sup_x |F_a(x) − F_b(x)|``, the largest gap between the two empirical CDFs (ties count on both sides at
    once, as ``scipy.stats.ks_2samp`` counts them).

    Example:
        >>> ks_statistic([0.1, 0.2, 0.2, 0.4], [0.2, 0.3])
        0.25
    """
    a, b = _check(a, "a"), _check(b, "b")
    gap, i, j = Fraction(0), 0, 0
    for x in sorted({*a, *b}):
        while i < len(a) and a[i] <= x:
            i += 1
        while j < len(b) and b[j] <= x:
            j += 1
        gap = max(gap, abs(Fraction(i, len(a)) - Fraction(j, len(b))))
    return float(gap)


def ks_p_value(statistic: float, n: int, m: int) -> float:
    """P(D ≥ ``statistic``) for samples of sizes ``n`` and ``m`` drawn from one continuous distribution, two-sided.

    Exact for n · m ≤ :data:`EXACT_LIMIT`: one minus the share of the C(n + m, n) lattice paths from (0, 0) to
    (n, m) that keep ``|i/n − j/m| < D`` at every point (Hodges 1958), counted in integers. Beyond it, Kolmogorov's
    limit with Stephens' correction, λ = (√e + 0.12 + 0.11/√e) · D with e = nm/(n + m).

    Example:
        >>> ks_p_value(1.0, 3, 3)  # 2 of the C(6, 3) = 20 orders put all of one sample first
        0.1
    """
    if n < 1 or m < 1:
        raise ValueError(f"both samples need at least one value, got sizes {n} and {m}")
    if not 0.0 <= statistic <= 1.0:
        raise ValueError(f"a KS statistic is in [0, 1], got {statistic}")
    if n * m > EXACT_LIMIT:
        return _asymptotic_p_value(statistic, n, m)
    lcm = n * m // math.gcd(n, m)
    h = round(statistic * lcm)  # D in units of 1/lcm: every attainable D is a multiple of it
    if h == 0:
        return 1.0
    step_i, step_j = lcm // n, lcm // m
    inside = [1] + [0] * m  # paths to (i, j) that stayed inside |i/n − j/m| < D
    for j in range(1, m + 1):
        inside[j] = inside[j - 1] if abs(j * step_j) < h else 0
    for i in range(1, n + 1):
        inside[0] = inside[0] if i * step_i < h else 0
        for j in range(1, m + 1):
            inside[j] = inside[j] + inside[j - 1] if abs(i * step_i - j * step_j) < h else 0
    return float(1 - Fraction(inside[m], math.comb(n + m, n)))


def _asymptotic_p_value(statistic: float, n: int, m: int) -> float:
    root = math.sqrt(n * m / (n + m))
    lam = (root + 0.12 + 0.11 / root) * statistic
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return min(1.0, max(0.0, 2.0 * total))


def ks_critical_value(n: int, m: int, alpha: float = 0.05) -> float:
    """The D above which two samples of sizes ``n`` and ``m`` differ at level ``alpha`` (the large-sample formula
    √(−ln(α/2) · (n + m) / (2nm)); 0.34 for 32 and 32 at α = 0.05).

    Example:
        >>> round(ks_critical_value(32, 32), 4)
        0.3395
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return math.sqrt(-math.log(alpha / 2) * (n + m) / (2 * n * m))


def ks_test(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> KSTest:
    """The two-sample KS test of ``a`` against ``b`` (:func:`ks_statistic`, :func:`ks_p_value`,
    :func:`ks_critical_value` at ``alpha``).

    Example:
        >>> ks_test([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
        KSTest(statistic=1.0, p_value=0.1, critical_value=1.108...)
    """
    statistic = ks_statistic(a, b)
    return KSTest(statistic, ks_p_value(statistic, len(a), len(b)), ks_critical_value(len(a), len(b), alpha))


def retrain_verdict(
    g: Mapping[int, float] | Sequence[float],
    retrain_g: Mapping[int, float] | Sequence[float],
    threshold: float,
    alpha: float = 0.05,
    inclusive: bool = False,
) -> dict[str, float | int | bool]:
    """One attack's verdict: the forget records above ``threshold`` for the model (``g``) and for the retrain
    (``retrain_g``: the forget records' g on a model that never saw them, under the same attack), and the KS test
    between the two; ``indistinguishable`` when its p-value is at least ``alpha``. ``inclusive`` counts values at
    ``threshold`` too (a discovery probability of at least p).

    Returns:
        ``{"above", "retrain_above", "ks", "p_value", "critical_value", "indistinguishable"}``.

    Example:
        >>> retrain_verdict([0.1, 0.5, 0.2], [0.2, 0.1, 0.6], threshold=0.3)["above"]
        1
    """
    values = list(g.values()) if isinstance(g, Mapping) else list(g)
    reference = list(retrain_g.values()) if isinstance(retrain_g, Mapping) else list(retrain_g)
    test = ks_test(values, reference, alpha)

    def above(scores: list[float]) -> int:
        return sum(value > threshold or (inclusive and value == threshold) for value in scores)

    return {
        "above": above(values),
        "retrain_above": above(reference),
        "ks": test.statistic,
        "p_value": test.p_value,
        "critical_value": test.critical_value,
        "indistinguishable": test.p_value >= alpha,
    }


def _check(values: Sequence[float], name: str) -> list[float]:
    values = sorted(float(value) for value in values)
    if not values:
        raise ValueError(f"sample {name} is empty: a KS test needs at least one value in each sample")
    if any(math.isnan(value) for value in values):
        raise ValueError(f"sample {name} holds NaN")
    return values
