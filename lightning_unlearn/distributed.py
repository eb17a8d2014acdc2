"""Per-sample scores on every process: shard the scoring, gather the results, de-duplicate by ``sample_id``.

Every process runs the same number of forward passes (a rank with fewer batches repeats its last one), so a
sharded model (ZeRO-3) never waits on a rank that has stopped. Results are identical on 1 or N processes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping

import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor

from lightning_unlearn.memorization import score_memorization
from lightning_unlearn.metrics import deduplicate


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


def score_on_all_ranks(
    model: torch.nn.Module,
    dataloader: Iterable[Mapping[str, Tensor]],
    strategy: Strategy | None = None,
    progress: bool = False,
    desc: str = "memorization",
    measure: Callable[[torch.nn.Module, Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """g (or ``measure``, see :func:`score_memorization`) of every sample of ``dataloader``, each process
    scoring every world_size-th batch.

    Returns sorted unique ``sample_id`` (``Tensor[N]`` long, on CPU) and their g (``Tensor[N]`` float, on CPU).
    """
    rank, world = (strategy.global_rank, strategy.world_size) if strategy is not None else (0, 1)
    try:
        len(dataloader)  # a DataLoader over an IterableDataset has __len__, yet raises here
        batches = dataloader
    except TypeError:  # no length to plan equal shares with: collate it once
        batches = list(dataloader)
    if not len(batches):
        raise ValueError(f"nothing to score: the {desc} dataloader is empty")
    mine = _share(batches, rank, world)
    scores = score_memorization(model, mine, progress=progress and rank == 0, desc=desc, measure=measure)
    device = next(model.parameters()).device
    ids = torch.tensor(list(scores), dtype=torch.long, device=device)
    values = torch.tensor(list(scores.values()), dtype=torch.float32, device=device)
    ids, values = gather_scores(strategy, ids, values)
    return ids.cpu(), values.cpu()


def _share(batches: Collection[Mapping[str, Tensor]], rank: int, world: int) -> Iterator[Mapping[str, Tensor]]:
    """Every ``world``-th batch from ``rank`` on, one at a time (a scoring pass never holds the whole set), then
    this rank's last batch again until every rank has yielded ceil(len / world) batches."""
    last, count = None, 0
    for index, batch in enumerate(batches):
        if index % world == rank:
            last, count = batch, count + 1
            yield batch
    if last is None:  # more ranks than batches: repeat the first
        last = next(iter(batches))
    for _ in range(-(-len(batches) // world) - count):
        yield last
