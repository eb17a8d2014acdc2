"""Per-sample values keyed by ``sample_id``: one value per sample out of pairs gathered from steps and processes."""

from __future__ import annotations

import torch
from torch import Tensor


def deduplicate(sample_ids: Tensor, values: Tensor, updates: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sorted unique ids (``Tensor[N]``) and, for each, its value at its last occurrence (``Tensor[N]``); with
    ``updates`` (``Tensor[M]`` of int, one per pair: when it was given), its value from its latest update, the last
    occurrence among those (processes' pairs come concatenated rank by rank, so position alone is not time).

    Example:
        >>> deduplicate(torch.tensor([3, 1, 3]), torch.tensor([0.1, 0.2, 0.3]))
        (tensor([1, 3]), tensor([0.2000, 0.3000]))
    """
    unique, inverse = torch.unique(sample_ids, return_inverse=True)
    position = torch.arange(len(sample_ids), device=sample_ids.device)
    if updates is not None:
        position = updates.to(position.device).long() * len(sample_ids) + position
    last = torch.full_like(unique, -1).scatter_reduce(0, inverse, position, "amax")
    return unique, values[last % max(len(sample_ids), 1)]
