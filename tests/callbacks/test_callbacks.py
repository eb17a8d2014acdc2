"""Memorization callbacks: the SGA rule, the monitor on a user's own module, stopping, and resuming."""

from __future__ import annotations

import copy
import csv
import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_unlearn import GradientAscent, SelectiveGradientAscent, UnlearningDataModule
from lightning_unlearn.callbacks import (
    MemorizationEarlyStopping,
    MemorizationMonitor,
    SelectiveAscent,
    per_sample_control,
    selective_weights,
)
from lightning_unlearn.data import PadCollator, TokenizedSplit
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.memorization import sequence_nll
from lightning_unlearn.functional.thresholds import bootstrap_interval, holdout_threshold
from tests.conftest import find, make_trainer, unlearning_data
from tests.helpers.own_module import WeightedAscent


@pytest.mark.parametrize(
    ("g", "gamma", "keep_top", "mode", "expected"),
    [
        ([0.9, 0.5, 0.7, 0.69], 0.7, 1, "select", [1, 0, 1, 0]),  # g >= gamma is ascended, ties included
        ([0.3, 0.5, 0.1], 0.7, 1, "select", [0, 1, 0]),  # nothing above gamma: the most memorized is kept
        ([0.3, 0.5, 0.1], 0.7, 2, "select", [1, 1, 0]),
        ([0.3, 0.5, 0.1], 0.7, 0, "select", [0, 0, 0]),
        ([0.3, 0.5, 0.1], 0.7, 5, "select", [1, 1, 1]),  # keep_top larger than the batch
        ([0.85, 0.7, 0.4, 1.0], 0.7, 1, "proportional", [0.5, 0, 0, 1]),
        ([0.85, 0.76, 0.4, 0.1], 0.7, 1, "proportional", [1, 0.2, 0, 0]),
    ],
)
def test_selective_weights(g, gamma, keep_top, mode, expected):
    weights = selective_weights(torch.tensor(g), gamma, keep_top, mode)
    assert weights.tolist() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("g", "forgotten_at", "expected"),
    [
        ([0.3, 0.5, 0.1], 0.4, [0, 1, 0]),  # the top sample is still above: kept
        ([0.3, 0.35, 0.1], 0.4, [0, 0, 0]),  # every sample forgotten: none is pushed, not even the top
        ([0.9, 0.4, 0.41], 0.4, [1, 0, 0]),  # at the level counts as forgotten
    ],
)
def test_selective_weights_skip_what_is_forgotten(g, forgotten_at, expected):
    assert selective_weights(torch.tensor(g), 0.7, 1, "select", forgotten_at).tolist() == expected


def test_selective_rejects_bad_arguments():
    with pytest.raises(ValueError, match="gamma"):
        SelectiveAscent(gamma=1.0)
    with pytest.raises(ValueError, match="mode"):
        SelectiveAscent(mode="soft")
    with pytest.raises(ValueError, match="criterion"):
        MemorizationEarlyStopping(criterion="median")
    with pytest.raises(ValueError, match="threshold"):
        MemorizationEarlyStopping(threshold="unseen")
    with pytest.raises(ValueError, match="floor_quantile < quantile"):
        MemorizationEarlyStopping(threshold="holdout_quantile", quantile=1.2)


class UserFineTuner(L.LightningModule):
    """A user's own module: plain fine-tuning, nothing from this library."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return sequence_nll(logits, batch["input_ids"], batch["attention_mask"]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class CountPasses(MemorizationMonitor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.passes_at = []

    def refresh(self, trainer, pl_module, log=True):
        self.passes_at.append(trainer.global_step)
        super().refresh(trainer, pl_module, log)


def test_monitor_on_a_user_module(small_testbed):
    tb = small_testbed
    collate = PadCollator(tb.tokenizer.pad_token_id)
    holdout = TokenizedSplit("holdout", tb.holdout, tb.tokenizer, 128)
    train = DataLoader(holdout, batch_size=4, collate_fn=collate)
    watched = DataLoader(holdout, batch_size=5, collate_fn=collate)
    monitor = CountPasses(dataloader=watched, every_n_train_steps=2, split="holdout")
    trainer = make_trainer(max_steps=4, callbacks=[monitor])
    module = UserFineTuner(copy.deepcopy(tb.model))
    trainer.fit(module, train)
    assert monitor.passes_at == [0, 2, 4]  # before training, then every 2nd optimizer step
    expected = score_memorization(module.model, watched)
    assert monitor.scores == pytest.approx(expected)
    assert trainer.callback_metrics["holdout/g_mean"].item() == pytest.approx(sum(expected.values()) / 16)
    assert "holdout/outliers_above" in trainer.callback_metrics


def test_monitor_needs_a_dataloader_or_datamodule(small_testbed):
    trainer = make_trainer(max_steps=1, callbacks=[MemorizationMonitor()])
    loader = DataLoader(
        TokenizedSplit("x", small_testbed.holdout, small_testbed.tokenizer, 128),
        batch_size=4,
        collate_fn=PadCollator(0),
    )
    with pytest.raises(ValueError, match="MemorizationMonitor has no dataloader"):
        trainer.fit(UserFineTuner(copy.deepcopy(small_testbed.model)), loader)


def test_monitor_needs_a_model():
    class NoModel(L.LightningModule):
        pass

    with pytest.raises(AttributeError, match="exposes no language model"):
        MemorizationMonitor(dataloader=[]).setup(None, NoModel(), "fit")


def test_early_stopping_needs_a_monitor_and_a_holdout(small_testbed):
    tb = small_testbed
    module = GradientAscent(copy.deepcopy(tb.model))
    with pytest.raises(ValueError, match="no MemorizationMonitor watches the forget split"):
        make_trainer(callbacks=[MemorizationEarlyStopping(threshold=0.3)]).fit(module, unlearning_data(tb))
    module = SelectiveGradientAscent(copy.deepcopy(tb.model))
    with pytest.raises(ValueError, match="threshold='holdout_quantile' needs an UnlearningDataModule with a holdout"):
        make_trainer().fit(module, unlearning_data(tb, holdout=None))
    assert module.global_step == 0


def test_resume_restores_scores_weights_and_threshold(small_testbed, tmp_path):
    tb = small_testbed
    torch.manual_seed(0)
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=2e-4, threshold="holdout_mean")
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = make_trainer(max_epochs=3, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(module, unlearning_data(tb))
    first_monitor = find(trainer, MemorizationMonitor)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)

    resumed = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=2e-4, threshold="holdout_mean")
    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            monitor = find(trainer, MemorizationMonitor)
            stopping = find(trainer, MemorizationEarlyStopping)
            seen.update(
                weights=pl_module.forget_weights.values.clone(),
                threshold=stopping.threshold_value,
                values=monitor.values.clone(),
                step=trainer.global_step,
            )

    trainer = make_trainer(max_epochs=5, callbacks=[Probe()])
    trainer.fit(resumed, unlearning_data(tb), ckpt_path=tmp_path / "last.ckpt")
    assert seen["step"] == 3
    assert torch.equal(seen["weights"], saved["forget_weights"])
    assert 0 < seen["weights"].sum() < len(tb.forget)  # SGA had deselected some samples
    assert seen["threshold"] == pytest.approx(tb.summary["holdout_g_mean"], abs=1e-6)
    saved_monitor = next(v for k, v in saved["callbacks"].items() if k.startswith("MemorizationMonitor"))
    assert torch.equal(seen["values"], saved_monitor["values"])
    # Scored again for the restored weights, they are the first run's final scores.
    resumed_monitor = find(trainer, MemorizationMonitor)
    assert resumed_monitor.scored_at.min() >= 3
    assert len(first_monitor.values) == len(resumed_monitor.values) == len(tb.forget)


def test_attack_monitor_moves_towards_chance_under_sga(small_testbed):
    from lightning_unlearn.callbacks import MembershipMonitor

    attacks = MembershipMonitor(every_n_train_steps=2)
    trainer = make_trainer(callbacks=[attacks])
    module = SelectiveGradientAscent(copy.deepcopy(small_testbed.model), learning_rate=3e-4, threshold="holdout_mean")
    trainer.fit(module, unlearning_data(small_testbed))
    (first_step, before), (last_step, after) = attacks.history[0], attacks.history[-1]
    assert first_step == 0 and last_step == trainer.global_step
    assert set(before) == {"loss", "zlib", "min_k"}
    assert before["loss"] >= 0.75
    assert abs(after["loss"] - 0.5) < abs(before["loss"] - 0.5)
    assert "membership/loss_auc" in trainer.callback_metrics
    with pytest.raises(ValueError, match="unknown attacks"):
        MembershipMonitor(attacks=("lira",))


def sga_with_refresh(tb, refresh):
    """SGA on 32 records (16 memorized, 16 never seen: below the threshold from the start) in batches of 4: the
    monitor must re-score the samples outside each batch."""
    L.seed_everything(0)
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=3e-4, refresh=refresh, threshold=0.4)
    trainer = make_trainer()
    trainer.fit(module, UnlearningDataModule(tb.tokenizer, tb.forget + tb.holdout, holdout=tb.holdout, batch_size=4))
    monitor = find(trainer, MemorizationMonitor)
    stopping = find(trainer, MemorizationEarlyStopping)
    return monitor, stopping


def test_refresh_above_threshold_scores_less_and_ends_the_same(small_testbed):
    every, every_stop = sga_with_refresh(small_testbed, "all")
    above, above_stop = sga_with_refresh(small_testbed, "above_threshold")
    # "all" re-scores all 32 samples before training and after every step (the training forward of a batch of 4
    # covering only some of them must not be taken for a full pass).
    assert every.samples_scored == 32 * (every_stop.stopped_step + 1)
    # Scores do not depend on which samples share a scoring batch, and the samples assumed forgotten are
    # verified before stopping: the same decisions, so the very same run.
    assert every_stop.stopped_step is not None and above_stop.stopped_step == every_stop.stopped_step
    assert torch.equal(above.values, every.values)
    assert above.values.max() <= 0.4
    assert above.samples_scored < 0.6 * every.samples_scored


def test_refresh_above_threshold_verifies_samples_assumed_forgotten(small_testbed):
    """A sample that was forgotten, then came back above the threshold, blocks the stop until re-scored."""
    tb = small_testbed
    monitor = MemorizationMonitor(refresh="above_threshold")
    monitor.threshold = 0.5
    monitor._store(torch.arange(3), torch.tensor([0.2, 0.3, 0.6]), step=0)
    monitor._store(torch.tensor([2]), torch.tensor([0.4]), step=1)
    assert monitor.is_current(1) and not monitor.is_fresh(1)  # 0 and 1 assumed still forgotten
    monitor._store(torch.tensor([1]), torch.tensor([0.7]), step=0)  # an old score above the threshold
    assert not monitor.is_current(1)
    with pytest.raises(ValueError, match="pass no dataloader"):
        MemorizationMonitor(dataloader=unlearning_data(tb).scoring_dataloader(), refresh="above_threshold")
    with pytest.raises(ValueError, match="refresh must be"):
        MemorizationMonitor(refresh="sometimes")
    # By default a step's scoring follows the records still above the threshold, not the forget set's size.
    assert MemorizationMonitor().refresh_policy == "above_threshold"
    assert MemorizationMonitor(dataloader=unlearning_data(tb).scoring_dataloader()).refresh_policy == "all"


def test_quantile_threshold_floor_and_interval_are_measured_once_and_logged(small_testbed):
    tb = small_testbed
    holdout = torch.tensor(
        list(score_memorization(tb.model, unlearning_data(tb).scoring_dataloader("holdout")).values())
    )
    trainer = make_trainer(callbacks=[MemorizationMonitor(split="retain")])
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=3e-4, quantile=0.9)
    trainer.fit(module, unlearning_data(tb))
    stopping = find(trainer, MemorizationEarlyStopping)
    assert stopping.threshold_value == pytest.approx(holdout_threshold(holdout, "quantile", 0.9))
    assert stopping.floor == pytest.approx(holdout_threshold(holdout, "quantile", 0.05))
    assert stopping.interval == pytest.approx(bootstrap_interval(holdout, "quantile", 0.9))
    metrics = trainer.callback_metrics
    assert metrics["holdout/threshold"] == pytest.approx(stopping.threshold_value)
    assert {"holdout/threshold_low", "holdout/threshold_high", "holdout/floor", "forget/over_forgotten"} <= set(metrics)
    # The retain monitor given to the Trainer survives SGA's own callbacks, and scores the retain split.
    retain = next(cb for cb in trainer.callbacks if isinstance(cb, MemorizationMonitor) and cb.split == "retain")
    assert retain.scores == pytest.approx(
        score_memorization(module.model, unlearning_data(tb).scoring_dataloader("retain"))
    )
    assert metrics["retain/collateral"] == int(retain.lost(0.1).sum()) > 0  # SGA alone damages retain records


def test_skip_forgotten_leaves_forgotten_records_where_they_are(small_testbed):
    tb = small_testbed
    seen = []

    class Weights(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            monitor = find(trainer, MemorizationMonitor)
            forgotten = monitor.values <= monitor.threshold
            seen.append(bool((pl_module.forget_weights.values[forgotten] == 0).all()))

    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=3e-4, skip_forgotten=True)
    trainer = make_trainer(callbacks=[Weights()])
    trainer.fit(module, unlearning_data(tb))
    assert find(trainer, MemorizationEarlyStopping).stopped_step is not None
    assert seen and all(seen)


def test_per_sample_control_is_one_line_for_any_method(small_testbed):
    callbacks = per_sample_control(gamma=0.6, skip_forgotten=True, watch_retain=True)
    kinds = [type(cb) for cb in callbacks]
    assert kinds == [MemorizationMonitor, SelectiveAscent, MemorizationEarlyStopping, MemorizationMonitor]
    assert callbacks[1].gamma == 0.6 and callbacks[1].skip_forgotten and callbacks[3].split == "retain"
    assert callbacks[2].threshold == "holdout_quantile" and callbacks[2].criterion == "max"
    assert [type(cb) for cb in per_sample_control(select=False)] == [MemorizationMonitor, MemorizationEarlyStopping]


def test_monitor_gives_the_per_sample_scores_to_the_loggers_at_fit_end(small_testbed, tmp_path):
    """A table for loggers that take one, and a CSV in each logger's folder, with each sample's g at start and end."""
    from lightning.pytorch.loggers import CSVLogger, Logger

    class TableLogger(Logger):
        name, version = "tables", 0

        def __init__(self):
            super().__init__()
            self.tables = {}

        def log_metrics(self, metrics, step=None): ...

        def log_hyperparams(self, params, *args, **kwargs): ...

        def log_table(self, key, columns, data):
            self.tables[key] = (columns, data)

    tb = small_testbed
    tables = TableLogger()
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=3e-4)
    trainer = make_trainer(max_steps=3, logger=[CSVLogger(tmp_path), tables])
    trainer.fit(module, unlearning_data(tb))
    monitor = find(trainer, MemorizationMonitor)
    columns, rows = tables.tables["forget/per_sample"]
    assert columns == ["sample_id", "g_start", "g_end"] and len(rows) == len(tb.forget)
    assert [row[2] for row in rows] == pytest.approx([monitor.scores[i] for i in range(len(tb.forget))])
    with open(f"{trainer.loggers[0].log_dir}/forget_per_sample.csv") as f:
        written = list(csv.DictReader(f))
    assert [float(row["g_start"]) for row in written] == pytest.approx([row[1] for row in rows], abs=1e-12)
    assert any(float(row["g_end"]) < float(row["g_start"]) for row in written)


class SeenWeights(L.Callback):
    """Placed after SelectiveAscent: each step's forget weights beside its records' g and the step those belong to."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        monitor, ids = find(trainer, MemorizationMonitor), batch["forget"]["sample_id"]
        seen = (monitor.values[ids].clone(), batch["forget"]["weight"].clone(), monitor.scored_at[ids].clone())
        self.steps.append((*seen, trainer.global_step))


def test_a_users_own_module_gets_the_selection_in_the_batch_and_meets_the_rule(small_testbed):
    """Not our module: a LightningModule whose loss multiplies each record's NLL by ``batch["forget"]["weight"]``
    (the own-trainer guide's), with our monitor, selection and stop rule in its Trainer."""
    seen = SeenWeights()
    monitor, selection, stopping = per_sample_control()
    trainer = make_trainer(callbacks=[monitor, selection, stopping, seen])
    trainer.fit(WeightedAscent(copy.deepcopy(small_testbed.model), learning_rate=3e-4), unlearning_data(small_testbed))
    assert stopping.rule_met and stopping.stopped_step == len(seen.steps) > 1
    for g, weight, scored_at, step in seen.steps:
        assert (scored_at == step).all()  # decided on the scores of the weights the step starts from
        expected = (g >= selection.gamma).float()
        expected[g.argmax()] = 1.0  # keep_top
        assert weight.dtype == torch.float32 and weight.tolist() == expected.tolist()
    assert sum(int((weight == 0).sum()) for _, weight, _, _ in seen.steps) > 0  # records below γ were left alone
    assert max(monitor.scores.values()) <= stopping.threshold_value
    # Two micro-batches of half the records take the steps of one batch: the selection spans the optimizer step.
    halves, _, half_stopping = controls = per_sample_control()
    trainer = make_trainer(callbacks=controls, accumulate_grad_batches=2)
    module = WeightedAscent(copy.deepcopy(small_testbed.model), learning_rate=3e-4)
    trainer.fit(module, unlearning_data(small_testbed, batch_size=len(small_testbed.forget) // 2))
    assert abs(half_stopping.stopped_step - stopping.stopped_step) <= 1
    assert max(abs(halves.scores[i] - g) for i, g in monitor.scores.items()) <= 0.02


def test_the_own_trainer_guide_holds_the_tested_module():
    guide = (Path(__file__).parents[2] / "docs/guides/own-trainer.md").read_text()
    assert inspect.getsource(WeightedAscent) in guide
