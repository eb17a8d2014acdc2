"""Forgetting thresholds from the holdout distribution, and per-record tests against it: pure functions on tensors.

A record is *forgotten* when it is no more memorized than unseen records of the same kind (the holdout, never
trained on). The holdout's **mean** g is the threshold of the paper's mean rule; a per-record rule compared with the
mean over-forgets, as about half of unseen records lie above their own mean, so per-record decisions use a high
**quantile** (default 0.95: no more memorized than 95% of unseen records) or an empirical p-value. Records below a
low quantile (default 0.05) are **over-forgotten**: pushed below unseen data, itself a membership signal.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_unlearn.utilities.errors import ConfigurationError

Level = Literal["mean", "quantile"]

#: The holdout thresholds that stop rules and reports accept by name, and the threshold each one is.
HOLDOUT_THRESHOLDS: dict[str, Level] = {"holdout_mean": "mean", "holdout_quantile": "quantile"}

#: The fixed g band of the paper's outlier count c(D_f): (lower, upper), fractions in [0, 1].
BAND = (0.15, 0.60)


def check_threshold(threshold: str | float, owner: str) -> str | float:
    """``threshold`` as stop rules and reports take it: ``"holdout_quantile"`` (the per-sample rule's threshold, the
    default everywhere), ``"holdout_mean"`` or a fraction in [0, 1]; any other name is a clear error."""
    if isinstance(threshold, str):
        if threshold not in HOLDOUT_THRESHOLDS:
            names = "'holdout_quantile', 'holdout_mean'"
            raise ConfigurationError(f"{owner}: threshold must be {names} or a float, got {threshold!r}")
        return threshold
    return float(threshold)


def holdout_threshold(holdout_g: Tensor, kind: Level = "quantile", quantile: float = 0.95) -> float:
    """The forgetting threshold: the holdout's mean g, or its ``quantile`` (linear interpolation between records).

    Args:
        holdout_g: g of each holdout record, ``Tensor[N]`` of fractions in [0, 1].
        kind: ``"mean"`` (the paper's mean rule) or ``"quantile"`` (the per-record rule).
        quantile: a fraction in (0, 1), for ``kind="quantile"``.

    Example:
        >>> holdout_threshold(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), "quantile", 0.75)
        0.4000000059604645
    """
    holdout_g = _check_holdout(holdout_g)
    if kind == "mean":
        return holdout_g.mean().item()
    if kind != "quantile":
        raise ConfigurationError(f"kind must be 'mean' or 'quantile', got {kind!r}")
    if not 0.0 < quantile < 1.0:
        raise ConfigurationError(f"quantile must be in (0, 1), got {quantile}")
    return torch.quantile(holdout_g, quantile).item()


def holdout_band(holdout_g: Tensor, quantiles: tuple[float, float] = (0.05, 0.95)) -> tuple[float, float]:
    """The band of unseen data, (q_low, q_high) quantiles of the holdout's g: records below q_low are
    over-forgotten, records above q_high still memorized."""
    low, high = quantiles
    if not 0.0 < low < high < 1.0:
        raise ConfigurationError(f"need 0 < low < high < 1, got quantiles {quantiles}")
    return holdout_threshold(holdout_g, "quantile", low), holdout_threshold(holdout_g, "quantile", high)


def bootstrap_interval(
    holdout_g: Tensor,
    kind: Level = "quantile",
    quantile: float = 0.95,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`holdout_threshold`: how uncertain the threshold is for this holdout size.

    Resamples the holdout with replacement ``resamples`` times with its own generator (the global RNG, which a
    training run may depend on, is left as it was), from the sorted values, so the order of records does not matter.
    The interval narrows roughly as 1/sqrt(N).
    """
    holdout_g = _check_holdout(holdout_g).double().sort().values  # the same interval whatever the records' order
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(holdout_g), (resamples, len(holdout_g)), generator=generator)
    samples = holdout_g[picks]
    levels = samples.mean(1) if kind == "mean" else torch.quantile(samples, quantile, dim=1)
    tail = (1.0 - confidence) / 2
    low, high = torch.quantile(levels, torch.tensor([tail, 1.0 - tail], dtype=levels.dtype))
    return low.item(), high.item()


def empirical_p_values(g: Tensor, holdout_g: Tensor) -> Tensor:
    """Per record, the share of holdout records at least as memorized, with the +1 correction:
    p(x) = (1 + #{h : g_h >= g(x)}) / (1 + N), ``Tensor[B]`` in (0, 1]. Small p: more memorized than unseen data.

    Example:
        >>> empirical_p_values(torch.tensor([0.9, 0.2]), torch.tensor([0.1, 0.2, 0.3]))
        tensor([0.2500, 0.7500])
    """
    holdout_g = _check_holdout(holdout_g)
    at_least = (holdout_g[None, :] >= g[:, None]).sum(1)
    return (1.0 + at_least.float()) / (1.0 + len(holdout_g))


def benjamini_hochberg(p_values: Tensor, alpha: float = 0.05) -> Tensor:
    """Which hypotheses the Benjamini–Hochberg procedure rejects at false-discovery rate ``alpha``: the k smallest
    p-values, k the largest rank with p_(k) <= k · alpha / m. ``BoolTensor[m]`` in the input's order.

    Example:
        >>> benjamini_hochberg(torch.tensor([0.01, 0.04, 0.02, 0.5]), alpha=0.05)
        tensor([ True, False,  True, False])
    """
    if not 0.0 < alpha < 1.0:
        raise ConfigurationError(f"alpha must be in (0, 1), got {alpha}")
    m = len(p_values)
    order = torch.argsort(p_values, stable=True)
    ranks = torch.arange(1, m + 1, dtype=torch.double)
    passing = (p_values[order].double() <= ranks * alpha / m).nonzero().flatten()
    rejected = torch.zeros(m, dtype=torch.bool)
    if len(passing):
        rejected[order[: int(passing.max()) + 1]] = True
    return rejected


def _check_holdout(holdout_g: Tensor) -> Tensor:
    holdout_g = torch.as_tensor(holdout_g, dtype=torch.float32).flatten()
    holdout_g = holdout_g[~holdout_g.isnan()]
    if len(holdout_g) == 0:
        raise ConfigurationError("the holdout has no scored records: a forgetting threshold needs unseen records")
    return holdout_g
