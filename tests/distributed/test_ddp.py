"""Two CPU processes (DDP over gloo) take the same steps and reach the same per-sample scores as one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from lightning_unlearn.evaluation.scoring import _share, score_on_all_ranks
from tests.collectives import CheckedDDP, HostTensors, HostTensorsInSteps
from tests.conftest import DISTRIBUTED_METHODS, RankReport, make_trainer, unlearning_data


def run(tb, folder, devices, method="SGA", accumulate=1):
    make, callbacks = DISTRIBUTED_METHODS[method]
    module = make(copy.deepcopy(tb.model))
    datamodule = unlearning_data(tb, batch_size=len(tb.forget) // devices // accumulate)
    # Every collective of every step is checked for host tensors (tests.collectives: the CPU stand-in for NCCL).
    strategy = CheckedDDP(start_method="spawn") if devices > 1 else "auto"
    report = RankReport(folder)
    trainer = make_trainer(
        devices=devices,
        strategy=strategy,
        accumulate_grad_batches=accumulate,
        callbacks=[*callbacks(), report, HostTensorsInSteps()],
    )
    trainer.fit(module, datamodule)
    return report.read(devices)


@pytest.mark.parametrize(
    ("method", "steps", "max_difference"),
    [("SGA", 1, 0.02), ("selective NPO + KL retain", 2, 0.05), ("your own module", 1, 0.02)],
)
def test_two_processes_match_one(small_testbed, tmp_path, method, steps, max_difference):
    (single,) = run(small_testbed, tmp_path / "one", devices=1, method=method)
    ranks = run(small_testbed, tmp_path / "two", devices=2, method=method)
    assert ranks[0] == ranks[1]  # every process decided and scored the same
    assert single["stopped_step"] is not None
    assert abs(ranks[0]["stopped_step"] - single["stopped_step"]) <= steps
    difference = [abs(a - b) for a, b in zip(ranks[0]["scores"], single["scores"], strict=True)]
    assert max(difference) <= max_difference and sum(difference) / len(difference) <= 0.01


def test_two_processes_accumulating_two_micro_batches_match_one_big_batch(small_testbed, tmp_path):
    """Selection and normalization span every micro-batch of every process: 2 processes × 2 micro-batches of 4
    records take the steps of one batch of 16."""
    (single,) = run(small_testbed, tmp_path / "one", devices=1)
    ranks = run(small_testbed, tmp_path / "two", devices=2, accumulate=2)
    assert ranks[0] == ranks[1]
    assert abs(ranks[0]["stopped_step"] - single["stopped_step"]) <= 1
    difference = [abs(a - b) for a, b in zip(ranks[0]["scores"], single["scores"], strict=True)]
    assert max(difference) <= 0.02


def test_each_rank_scores_its_share_one_batch_at_a_time():
    made = []

    class Batches:  # sized and iterable, like a DataLoader; records each batch it makes
        def __len__(self):
            return 5

        def __iter__(self):
            for index in range(5):
                made.append(index)
                yield index

    share = _share(Batches(), rank=0, world=2)
    assert next(share) == 0 and made == [0]  # lazily: the set is never collated all at once
    assert list(share) == [2, 4]
    assert list(_share(Batches(), rank=1, world=2)) == [1, 3, 3]  # as many forwards as rank 0
    assert list(_share(Batches(), rank=6, world=8)) == [0]  # no batch of its own: still one forward
    shares = [list(_share(Batches(), rank, 3)) for rank in range(3)]
    assert sorted({b for share in shares for b in share}) == list(range(5)) and {len(s) for s in shares} == {2}


def test_scoring_takes_a_dataloader_without_a_length(tiny_model):
    class Records(IterableDataset):
        def __iter__(self):
            for i in range(3):
                yield {"input_ids": torch.tensor([1, 2, 3 + i]), "attention_mask": torch.ones(3), "sample_id": i}

    ids, values = score_on_all_ranks(tiny_model, DataLoader(Records(), batch_size=2))
    assert ids.tolist() == [0, 1, 2] and len(values) == 3


def test_host_tensors_marks_what_a_gpu_run_would_hold_on_the_host():
    device = torch.device("cpu")  # the strategy's device, on a GPU run the GPU
    with HostTensors() as tracker:
        on_device = torch.zeros(3, device=device)
        host = torch.zeros(3)
        written = torch.zeros(4, device=device)
        written[:3] = host
        assert not tracker.is_host(on_device) and not tracker.is_host(on_device * 2)
        assert tracker.is_host(host) and tracker.is_host(host + on_device) and tracker.is_host(written)
        assert tracker.is_host(on_device.cpu()) and not tracker.is_host(host.to(device))
