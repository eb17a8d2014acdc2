"""The verdict: does each forget record stand out from records the model never saw, under the same attack?

**Per record, against the holdout** (the paper's per-sample rule carried under attack; no retrain needed). Under each
attack, a forget record *comes back* when its g stands out above the g of the holdout records (never trained on)
scored on the same attacked model, and is *over-forgotten* when it stands out below them (in g, or above them in
NLL): pushed below unseen text, which a LOSS attack detects as well. "Stands out" is a multiple test over the
records (:func:`stands_out`): each record's p-value comes from a tail model of the holdout (:func:`tail_p_values`:
an exponential tail fitted to the holdout's top quarter, its scale at a 95% upper confidence bound, beyond which
empirical p-values cannot reach), and Benjamini–Hochberg at false-discovery rate α decides which records stand out.
Empirical p-values alone cannot flag anything among many records: with 128 holdout records the smallest is 1/129,
and BH over 32 records needs 0.05/32 for one. A distribution test alone misses a few records left memorized among
many forgotten ones (KS at 16 against 16 misses 4 records left at g = 0.9 in 90% of runs): aggregates hide the
records that are still extractable, the paper's own point.

**With a retrain** (a model that never saw the forget records), the two-sample Kolmogorov–Smirnov test of the
forget g against the retrain's under the same attack is a second, distribution-level check (two-sided: a model
pushed far below the retrain is as detectable as one above it), and the retrain's own forget records must not come
back (a check that the control is sound). An attack is *passed* when no record comes back and, with a retrain, KS
does not reject. Pure functions on numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from lightning_unlearn.functional.thresholds import benjamini_hochberg, empirical_p_values
from lightning_unlearn.utilities.errors import ConfigurationError

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
        raise ConfigurationError(f"both samples need at least one value, got sizes {n} and {m}")
    if not 0.0 <= statistic <= 1.0:
        raise ConfigurationError(f"a KS statistic is in [0, 1], got {statistic}")
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
        raise ConfigurationError(f"alpha must be in (0, 1), got {alpha}")
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
        raise ConfigurationError(f"sample {name} is empty: a KS test needs at least one value in each sample")
    if any(math.isnan(value) for value in values):
        raise ConfigurationError(f"sample {name} holds NaN")
    return values


Side = Literal["above", "below"]

#: the share of the holdout whose excesses fit the tail model
TAIL_FRACTION = 0.25
#: the confidence of the upper bound on the tail's scale
SCALE_CONFIDENCE = 0.95


class TailModel(NamedTuple):
    """An exponential tail of unseen records' scores above ``start`` (the holdout's 1 − ``share`` quantile): P(score
    ≥ start + x) = share · exp(−x / ``scale``), ``scale`` the mean excess at its upper confidence bound, fitted to
    ``records`` holdout records. ``scale`` is 0 when no holdout record is above ``start`` (no spread in the tail)."""

    start: float
    share: float
    scale: float
    records: int


def tail_model(
    holdout: Tensor, side: Side = "above", fraction: float = TAIL_FRACTION, confidence: float = SCALE_CONFIDENCE
) -> TailModel:
    """The :class:`TailModel` of ``holdout`` (``Tensor[M]``) on one ``side`` (``"below"``: of the negated scores, so
    ``start`` is then minus the holdout's ``fraction`` quantile).

    The excesses over the quantile are fitted by an exponential (peaks over a threshold with shape 0, heavier than
    the tail of any bounded score such as g); its scale is the mean excess times 2k / χ²_{1−confidence}(2k), the
    upper bound of an exponential mean from k excesses, so a holdout of a few records gives a wider tail, not a
    narrower one.

    Example:
        >>> model = tail_model(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]))
        >>> round(model.start, 3), model.share, model.records
        (0.625, 0.25, 8)
    """
    values = _sided(holdout, side)
    if not 0.0 < fraction < 1.0:
        raise ConfigurationError(f"fraction must be in (0, 1), got {fraction}")
    start = torch.quantile(values, 1.0 - fraction).item()
    excesses = values[values > start] - start
    if len(excesses) == 0:
        return TailModel(start, 0.0, 0.0, len(values))
    k = len(excesses)
    scale = excesses.mean().item() * 2 * k / _chi2_quantile(1.0 - confidence, 2 * k)
    return TailModel(start, k / len(values), scale, len(values))


def tail_p_values(values: Tensor, holdout: Tensor, side: Side = "above") -> Tensor:
    """Per record, how likely an unseen record scores at least as far out on ``side``, ``Tensor[B]`` in (0, 1]:
    beyond the tail's start, share · exp(−excess / scale) (:func:`tail_model`); within the holdout's body, the
    empirical p-value (1 + #{h at least as far out}) / (1 + M), which is never small there.

    Example:
        >>> holdout = torch.linspace(0.2, 0.4, 128)
        >>> tail_p_values(torch.tensor([0.3, 0.9]), holdout).tolist()[0] > 0.4
        True
    """
    model = tail_model(holdout, side)
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    values = -values if side == "below" else values
    empirical = empirical_p_values(values, _sided(holdout, side)).double()
    excess = values - model.start
    if model.scale == 0.0:  # no spread in the holdout's tail: beyond its top, nothing unseen reaches
        tail = torch.where(excess > 0, torch.zeros_like(excess), empirical)
    else:
        tail = model.share * torch.exp(-excess.clamp_min(0.0) / model.scale)
    return torch.where(excess > 0, torch.minimum(tail, empirical), empirical)


def stands_out(values: Tensor, holdout: Tensor, side: Side = "above", alpha: float = 0.05) -> Tensor:
    """Which records stand out from the holdout on ``side``: Benjamini–Hochberg at false-discovery rate ``alpha``
    over their :func:`tail_p_values`, ``BoolTensor[B]``. With no record truly out, some record is flagged with
    probability at most about ``alpha`` (the false-discovery rate is then the family-wise error).

    Example:
        >>> holdout = torch.linspace(0.2, 0.4, 128)
        >>> stands_out(torch.tensor([0.25, 0.31, 0.95]), holdout).tolist()
        [False, False, True]
    """
    if len(torch.as_tensor(values).flatten()) == 0:
        return torch.zeros(0, dtype=torch.bool)
    return benjamini_hochberg(tail_p_values(values, holdout, side), alpha)


def detection_level(holdout: Tensor, records: int, side: Side = "above", alpha: float = 0.05) -> float:
    """The score from which a record stands out whatever the other ``records − 1`` records score (its p-value at
    most α / records, the first step of Benjamini–Hochberg): on ``"above"``, every forget record at or above this g
    is found; on ``"below"``, every one at or below it. With no spread in the holdout's tail, anything beyond it.

    Example:
        >>> round(detection_level(torch.linspace(0.2, 0.4, 128), 32), 3)
        0.528
    """
    if records < 1:
        raise ConfigurationError(f"records must be >= 1, got {records}")
    model = tail_model(holdout, side)
    target = alpha / records
    if model.scale == 0.0 or model.share <= target:  # anything beyond the tail's start
        level = math.nextafter(model.start, math.inf)
    else:
        level = model.start + model.scale * math.log(model.share / target)
    return level if side == "above" else -level


class RecordVerdict(NamedTuple):
    """One attack's verdict on the forget records (indices into the forget scores as given).

    ``back``: records that stand out above the holdout in g (still or again memorized); ``over_forgotten``: records
    that stand out below it (in g, or above it in NLL); ``detectable_at``: the g from which a record is found
    whatever the others (:func:`detection_level`); ``passed``: nothing back (and, with a retrain, KS not rejecting).
    With a retrain: its KS test against the forget g (``ks``), and ``retrain_back``, its own forget records that
    stand out (the control must be sound: 0)."""

    back: list[int]
    over_forgotten: list[int]
    detectable_at: float
    passed: bool
    ks: KSTest | None = None
    retrain_back: list[int] | None = None


def record_verdict(
    g: Sequence[float],
    holdout_g: Sequence[float],
    alpha: float = 0.05,
    nll: Sequence[float] | None = None,
    holdout_nll: Sequence[float] | None = None,
    retrain_g: Sequence[float] | None = None,
    retrain_holdout_g: Sequence[float] | None = None,
) -> RecordVerdict:
    """One attack's per-record verdict: the forget records' ``g`` against the same attacked model's ``holdout_g``
    (:func:`stands_out` above: back; below, or ``nll`` above ``holdout_nll``: over-forgotten), and with
    ``retrain_g`` (the forget records' g on a model that never saw them, under the same attack) the KS test and
    the retrain's own records that stand out (against ``retrain_holdout_g``, the retrain's holdout under the same
    attack, when given; else against ``holdout_g``).

    Example:
        >>> holdout = [0.2 + 0.2 * i / 127 for i in range(128)]
        >>> record_verdict([0.25, 0.3, 0.97], holdout).back
        [2]
    """
    scores, unseen = torch.tensor(list(g), dtype=torch.float64), torch.tensor(list(holdout_g), dtype=torch.float64)
    back = _indices(stands_out(scores, unseen, "above", alpha))
    low = stands_out(scores, unseen, "below", alpha)
    if nll is not None and holdout_nll is not None:
        low |= stands_out(torch.tensor(list(nll)), torch.tensor(list(holdout_nll)), "above", alpha)
    ks, retrain_back = None, None
    if retrain_g is not None:
        ks = ks_test(list(g), list(retrain_g), alpha)
        control = unseen if retrain_holdout_g is None else torch.tensor(list(retrain_holdout_g), dtype=torch.float64)
        retrain_back = _indices(stands_out(torch.tensor(list(retrain_g)), control, "above", alpha))
    passed = not back and (ks is None or ks.p_value >= alpha)
    level = detection_level(unseen, len(scores), "above", alpha)
    return RecordVerdict(back, _indices(low), level, passed, ks, retrain_back)


def discovery_verdict(
    p: Sequence[float], discovery: float = 0.5, alpha: float = 0.05, retrain_p: Sequence[float] | None = None
) -> RecordVerdict:
    """The sampling attack's verdict: a record is back when it is (n, p)-discoverable, its discovery probability
    (``p``, fractions in [0, 1]) at least ``discovery``: an extraction, whatever unseen records do. With
    ``retrain_p``, the KS test against the retrain's and the retrain's own discoverable records.

    Example:
        >>> discovery_verdict([0.1, 0.7, 0.5]).back
        [1, 2]
    """
    back = [i for i, value in enumerate(p) if value >= discovery]
    ks, retrain_back = None, None
    if retrain_p is not None:
        ks = ks_test(list(p), list(retrain_p), alpha)
        retrain_back = [i for i, value in enumerate(retrain_p) if value >= discovery]
    return RecordVerdict(back, [], discovery, not back and (ks is None or ks.p_value >= alpha), ks, retrain_back)


def _indices(flags: Tensor) -> list[int]:
    return flags.nonzero().flatten().tolist()


def _sided(values: Tensor, side: Side) -> Tensor:
    if side not in ("above", "below"):
        raise ConfigurationError(f"side must be 'above' or 'below', got {side!r}")
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    values = values[~values.isnan()]
    if len(values) == 0:
        raise ConfigurationError("the holdout has no scored records: a verdict needs unseen records to compare with")
    return -values if side == "below" else values


def _chi2_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile of χ² with ``dof`` degrees of freedom (Wilson–Hilferty; within 0.5% for dof ≥ 10,
    conservative below)."""
    z = -math.sqrt(2) * _erfinv(1 - 2 * probability)
    a = 2.0 / (9.0 * dof)
    return max(dof * (1.0 - a + z * math.sqrt(a)) ** 3, 1e-12)  # the cube root of χ²/dof is nearly normal


def _erfinv(y: float) -> float:
    return torch.special.erfinv(torch.tensor(y, dtype=torch.float64)).item()
