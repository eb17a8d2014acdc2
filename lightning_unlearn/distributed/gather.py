"""Per-sample scores from every process, gathered and de-duplicated by ``sample_id`` (a ``DistributedSampler`` pads
the last batch by repeating samples), so results are identical on 1 or N processes."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor

from lightning_unlearn.functional.per_sample import deduplicate


def gather_scores(strategy: Strategy | None, sample_ids: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """All processes' (sample_id, value) pairs, each id once (its last value): ``Tensor[N]`` long, ``Tensor[N]``."""
    if strategy is None or strategy.world_size == 1:
        return deduplicate(sample_ids, values)
    size = torch.tensor([len(sample_ids)], device=sample_ids.device)
    longest = int(strategy.all_gather(size).max())
    padded_ids = torch.full((longest,), -1, dtype=torch.long, device=sample_ids.device)
    padded_values = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded_ids[: len(sample_ids)] = sample_ids
    padded_values[: len(values)] = values
    all_ids = strategy.all_gather(padded_ids).reshape(-1)
    all_values = strategy.all_gather(padded_values).reshape(-1)
    real = all_ids >= 0
    return deduplicate(all_ids[real], all_values[real])


def gather_ids(strategy: Strategy | None, sample_ids: Tensor) -> Tensor:
    """All processes' ``sample_ids``, each once, sorted (``Tensor[N]`` long), as :func:`gather_scores` gathers them:
    the same on every process.

    Example:
        >>> gather_ids(None, torch.tensor([3, 1, 3]))
        tensor([1, 3])
    """
    no_values = torch.zeros(len(sample_ids), dtype=torch.float32, device=sample_ids.device)
    return gather_scores(strategy, sample_ids, no_values)[0]
