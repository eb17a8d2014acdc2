"""Memorization metrics as torchmetrics: per-sample values keyed by ``sample_id``, synchronized across processes.

Each metric keeps the (sample_id, value) pairs it was given, each with the number of the update that gave it.
Across processes the pairs are concatenated and de-duplicated by id (a ``DistributedSampler`` pads the last batch by
repeating samples), keeping each id's value from its latest update, whichever process scored it, so results are the
same on 1 or N processes. ``compute()`` gives the aggregate and ``per_sample()``
the ``{sample_id: value}`` map.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lightning_unlearn.evaluation.scoring import extraction_likelihood
from lightning_unlearn.functional.memorization import memorization_accuracy
from lightning_unlearn.functional.per_sample import deduplicate
from lightning_unlearn.functional.thresholds import BAND, holdout_band
from lightning_unlearn.utilities.errors import ConfigurationError


class _PerSampleMetric(Metric):
    """Holds (sample_id, value) pairs; subclasses turn a batch into values and the unique values into a result."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("sample_ids", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("updates", default=[], dist_reduce_fx="cat")  # the update that gave each pair

    def _append(self, values: Tensor, sample_id: Tensor | list[int]) -> None:
        sample_id = torch.as_tensor(sample_id, device=values.device).long().flatten()
        if sample_id.shape != values.shape:
            raise ConfigurationError(f"got {len(sample_id)} sample ids for {len(values)} values")
        self.sample_ids.append(sample_id)
        self.values.append(values.detach().float())
        self.updates.append(torch.full_like(sample_id, self._update_count))  # the same count on every process

    def _unique(self) -> tuple[Tensor, Tensor]:
        if len(self.sample_ids) == 0:
            raise RuntimeError(f"{type(self).__name__} has no samples: call update() first")
        return deduplicate(dim_zero_cat(self.sample_ids), dim_zero_cat(self.values), dim_zero_cat(self.updates))

    def per_sample(self) -> dict[int, float]:
        """``{sample_id: value}`` over all processes, each id once."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=True):
            ids, values = self._unique()
        return dict(zip(ids.tolist(), values.tolist(), strict=True))

    def compute(self) -> Tensor:
        """Mean over unique samples."""
        return self._unique()[1].mean()


class MemorizationAccuracy(_PerSampleMetric):
    """Memorization accuracy g(x) per sample (fractions in [0, 1]); ``compute()`` is the mean over unique samples.

    Example:
        >>> import torch
        >>> metric = MemorizationAccuracy()
        >>> ids = torch.tensor([[1, 2, 3], [1, 2, 0]])
        >>> mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
        >>> logits = torch.nn.functional.one_hot(torch.tensor([[2, 3, 0], [0, 0, 0]]), 4).float()
        >>> metric.update(logits, ids, mask, sample_id=torch.tensor([7, 9]))
        >>> metric.per_sample()
        {7: 1.0, 9: 0.0}
        >>> metric.compute()
        tensor(0.5000)
    """

    higher_is_better = False

    def update(self, logits: Tensor, input_ids: Tensor, attention_mask: Tensor, sample_id: Tensor) -> None:
        """Adds a batch: ``logits`` ``Tensor[B, T, V]``, ids and mask ``Tensor[B, T]``, ``sample_id`` ``Tensor[B]``."""
        self._append(memorization_accuracy(logits, input_ids, attention_mask), sample_id)


class ExtractionLikelihood(_PerSampleMetric):
    """Extraction likelihood EL_n per sample (fractions in [0, 1]); ``compute()`` is the mean over unique samples.

    Args:
        n: n-gram size (Jang et al. use 10).
    """

    higher_is_better = False

    def __init__(self, n: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = n

    def update(self, model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, sample_id: Tensor) -> None:
        """Adds a batch, greedy-decoding with ``model``; ids and mask ``Tensor[B, T]``, ``sample_id`` ``Tensor[B]``."""
        self._append(extraction_likelihood(model, input_ids, attention_mask, n=self.n), sample_id)


class MemorizationOutliers(_PerSampleMetric):
    """The paper's unlearning quality c(D_f): how many forget samples have g outside the band (lower, upper).

    A sample with g >= ``upper`` is still extractable; one with g <= ``lower`` is abnormally forgotten, itself a
    membership signal. ``compute()`` returns ``{"above": n, "below": n, "outliers": above + below, "total": N}``
    (counts of unique samples, ``Tensor`` scalars).

    Args:
        lower: lower edge of the acceptable band, a fraction in [0, 1] (the authors used 0.15).
        upper: upper edge, a fraction in [0, 1] (the authors used 0.60).

    Example:
        >>> import torch
        >>> metric = MemorizationOutliers(lower=0.15, upper=0.60)
        >>> metric.update(torch.tensor([0.9, 0.4, 0.1, 0.9]), sample_id=torch.tensor([0, 1, 2, 0]))
        >>> {k: int(v) for k, v in metric.compute().items()}
        {'above': 1, 'below': 1, 'outliers': 2, 'total': 3}
    """

    higher_is_better = False

    def __init__(self, lower: float = BAND[0], upper: float = BAND[1], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= lower < upper <= 1.0:
            raise ConfigurationError(f"need 0 <= lower < upper <= 1, got lower={lower}, upper={upper}")
        self.lower = lower
        self.upper = upper

    @classmethod
    def from_holdout(
        cls, holdout_g: Tensor, quantiles: tuple[float, float] = (0.05, 0.95), **kwargs: Any
    ) -> MemorizationOutliers:
        """The band of unseen data: [q_low, q_high] quantiles of the holdout's g (``Tensor[N]``). Below it a forget
        sample is over-forgotten, above it still memorized.

        Example:
            >>> metric = MemorizationOutliers.from_holdout(torch.linspace(0.2, 0.4, 21))
            >>> round(metric.lower, 3), round(metric.upper, 3)
            (0.21, 0.39)
        """
        lower, upper = holdout_band(holdout_g, quantiles)
        return cls(lower=lower, upper=upper, **kwargs)

    def update(self, scores: Tensor, sample_id: Tensor) -> None:
        """Adds memorization scores g (``Tensor[B]``, e.g. from :class:`MemorizationAccuracy`) of ``sample_id``."""
        self._append(torch.as_tensor(scores).flatten(), sample_id)

    def compute(self) -> dict[str, Tensor]:
        scores = self._unique()[1]
        above = (scores >= self.upper).sum()
        below = (scores <= self.lower).sum()
        return {"above": above, "below": below, "outliers": above + below, "total": torch.tensor(len(scores))}
