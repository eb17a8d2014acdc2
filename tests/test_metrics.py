"""Metric classes: per-sample values, de-duplication, and synchronization in a real 2-process gloo group."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lightning_unlearn.evaluation.scoring import extraction_likelihood
from lightning_unlearn.functional.memorization import memorization_accuracy
from lightning_unlearn.functional.per_sample import deduplicate
from lightning_unlearn.metrics import ExtractionLikelihood, MemorizationAccuracy, MemorizationOutliers
from tests.conftest import make_model


def test_deduplicate_keeps_last_value_per_id():
    ids, values = deduplicate(torch.tensor([3, 1, 3, 2]), torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert ids.tolist() == [1, 2, 3]
    assert values.tolist() == pytest.approx([0.2, 0.4, 0.3])


def test_memorization_accuracy_metric_deduplicates():
    metric = MemorizationAccuracy()
    ids = torch.tensor([[1, 2, 3], [1, 2, 3]])
    mask = torch.ones_like(ids)
    right = F.one_hot(torch.tensor([[2, 3, 0], [2, 0, 0]]), 4).float()
    metric.update(right, ids, mask, torch.tensor([0, 1]))
    metric.update(right[:1], ids[:1], mask[:1], torch.tensor([0]))  # a padded repeat of sample 0
    assert metric.per_sample() == {0: 1.0, 1: 0.5}
    assert metric.compute().item() == pytest.approx(0.75)


def test_extraction_likelihood_metric_equals_function():
    model = make_model()
    ids = torch.randint(1, 64, (3, 14), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    metric = ExtractionLikelihood(n=3)
    metric.update(model, ids, mask, torch.tensor([4, 5, 6]))
    expected = extraction_likelihood(model, ids, mask, n=3)
    assert list(metric.per_sample().values()) == pytest.approx(expected.tolist())
    assert metric.compute().item() == pytest.approx(expected.mean().item())


def test_outliers_counts_above_and_below():
    metric = MemorizationOutliers(lower=0.15, upper=0.6)
    metric.update(torch.tensor([0.6, 0.59, 0.15, 0.16, 1.0, 0.0]), torch.arange(6))
    result = {k: int(v) for k, v in metric.compute().items()}
    assert result == {"above": 2, "below": 2, "outliers": 4, "total": 6}


def test_outliers_rejects_bad_band():
    with pytest.raises(ValueError, match="lower < upper"):
        MemorizationOutliers(lower=0.7, upper=0.6)


def test_metric_without_samples_raises():
    with pytest.raises(RuntimeError, match="no samples"):
        MemorizationAccuracy().per_sample()


def test_mismatched_ids_raise():
    with pytest.raises(ValueError, match="2 sample ids for 3 values"):
        MemorizationOutliers().update(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shard_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        logits = torch.randn(5, 6, 8)
        ids = torch.randint(0, 8, (5, 6))
        mask = torch.ones_like(ids)
        mask[3, 4:] = 0
        # DistributedSampler-style shards of 5 samples over 2 ranks: rank 1 repeats sample 0 as padding.
        shard = [[0, 2, 4], [1, 3, 0]][rank]
        accuracy, outliers = MemorizationAccuracy(), MemorizationOutliers(lower=0.2, upper=0.5)
        accuracy.update(logits[shard], ids[shard], mask[shard], torch.tensor(shard))
        outliers.update(memorization_accuracy(logits[shard], ids[shard], mask[shard]), torch.tensor(shard))
        result = {
            "per_sample": accuracy.per_sample(),
            "mean": accuracy.compute().item(),
            "outliers": {k: int(v) for k, v in outliers.compute().items()},
            "expected": memorization_accuracy(logits, ids, mask).tolist(),
        }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_metrics_synchronize_and_deduplicate_across_two_processes(tmp_path):
    mp.spawn(_shard_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    expected = results[0]["expected"]
    for result in results:
        per_sample = {int(k): v for k, v in result["per_sample"].items()}
        assert sorted(per_sample) == [0, 1, 2, 3, 4]
        assert [per_sample[i] for i in range(5)] == pytest.approx(expected)
        assert result["mean"] == pytest.approx(sum(expected) / 5)
        scores = torch.tensor(expected)  # float32, as the metric compares them: g = 1/5 is at the lower edge
        above, below = int((scores >= 0.5).sum()), int((scores <= 0.2).sum())
        assert result["outliers"] == {"above": above, "below": below, "outliers": above + below, "total": 5}


def test_outliers_band_from_the_holdout_distribution():
    holdout = torch.tensor([0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5])
    metric = MemorizationOutliers.from_holdout(holdout, quantiles=(0.05, 0.95))
    assert (metric.lower, metric.upper) == pytest.approx((0.13, 0.47))  # linear between order statistics
    metric.update(torch.tensor([0.05, 0.3, 0.9]), torch.arange(3))
    assert {k: int(v) for k, v in metric.compute().items()} == {"above": 1, "below": 1, "outliers": 2, "total": 3}


def test_the_latest_value_wins_whichever_process_gave_it():
    """Processes' pairs come concatenated rank by rank: a sample scored by process 1 at the first update and by
    process 0 at the second keeps process 0's value (the last by position would be process 1's stale one)."""
    other = MemorizationOutliers()  # process 1's state
    other.update(torch.tensor([0.8]), sample_id=torch.tensor([5]))
    other.update(torch.tensor([0.4]), sample_id=torch.tensor([2]))
    states = iter([torch.cat(getattr(other, name)) for name in other._reductions])  # in the order synced

    def gather(tensor, group=None):  # what gather_all_tensors returns on process 0 of 2
        return [tensor, next(states)]

    metric = MemorizationOutliers(dist_sync_fn=gather, distributed_available_fn=lambda: True)
    metric.update(torch.tensor([0.5]), sample_id=torch.tensor([1]))
    metric.update(torch.tensor([0.2]), sample_id=torch.tensor([5]))
    assert metric.per_sample() == pytest.approx({1: 0.5, 2: 0.4, 5: 0.2})
