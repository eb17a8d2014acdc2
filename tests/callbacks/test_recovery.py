"""RecoveryCheck: the attacks at fit end, at the level of the model before unlearning, logged."""

from __future__ import annotations

import copy
import csv

import lightning as L
import pytest

from lightning_unlearn import SelectiveGradientAscent
from lightning_unlearn.callbacks import MemorizationEarlyStopping, RecoveryCheck
from lightning_unlearn.evaluation.recovery import above, relearn
from lightning_unlearn.evaluation.scoring import score_memorization
from tests.conftest import find, make_trainer, unlearning_data


def test_recovery_check_attacks_the_result_at_the_original_level_and_logs_it(small_testbed, tmp_path):
    tb = small_testbed
    check = RecoveryCheck(attacks=("relearn", "int4"), relearn_steps=5)
    module = SelectiveGradientAscent(copy.deepcopy(tb.model), learning_rate=3e-4)
    data = unlearning_data(tb)
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = make_trainer(callbacks=[check], logger=logger)
    trainer.fit(module, data)
    assert check.threshold == pytest.approx(find(trainer, MemorizationEarlyStopping).threshold_value)
    relearned = relearn(module.model, data.scoring_dataloader("retain", batch_size=len(tb.retain)), steps=5)
    expected = above(score_memorization(relearned, data.scoring_dataloader("forget")), check.threshold)
    assert check.results["relearn_above"] == expected
    assert set(check.results) >= {"int4_above", "int4_holdout_above", "relearn_holdout_above"}
    logger.save()
    with open(f"{logger.log_dir}/metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("recovery/relearn_above")]
    assert float(logged[-1]["recovery/relearn_above"]) == expected
    assert check.state_dict()["threshold"] == check.threshold


def test_recovery_check_refuses_unknown_attacks_and_a_missing_holdout(small_testbed):
    with pytest.raises(ValueError, match="unknown attack"):
        RecoveryCheck(attacks=("prune",))
    module = SelectiveGradientAscent(copy.deepcopy(small_testbed.model))
    with pytest.raises(ValueError, match="needs an UnlearningDataModule with a holdout split"):
        make_trainer(callbacks=[RecoveryCheck()]).fit(module, unlearning_data(small_testbed, holdout=None))
