"""Old spellings keep working for one release, with a FutureWarning that names the new one."""

from __future__ import annotations

import copy

import pytest

from lightning_unlearn.callbacks import MemorizationEarlyStopping
from lightning_unlearn.modules import GradientDifference, SelectiveGradientAscent, TaskArithmetic, UnlearningModule
from lightning_unlearn.thresholds import check_threshold


def test_old_module_arguments_still_work(tiny_model):
    with pytest.warns(FutureWarning, match="stop= is deprecated.*use criterion="):
        sga = SelectiveGradientAscent(copy.deepcopy(tiny_model), stop="mean")
    assert sga.stopping.criterion == "mean" and sga.hparams.criterion == "mean" and "stop" not in sga.hparams
    with pytest.warns(FutureWarning, match="stop= is deprecated"):
        assert TaskArithmetic(copy.deepcopy(tiny_model), stop="mean").stopping.criterion == "mean"
    with pytest.warns(FutureWarning, match="alpha= is deprecated.*use retain_weight="):
        gd = GradientDifference(copy.deepcopy(tiny_model), alpha=2.0)
    assert gd.hparams.retain_weight == 2.0 and "alpha" not in gd.hparams
    with pytest.warns(FutureWarning, match="refresh_every= is deprecated.*use every_n_train_steps="):
        module = UnlearningModule(copy.deepcopy(tiny_model), refresh_every=3)
    assert module.hparams.every_n_train_steps == 3 and "refresh_every" not in module.hparams


def test_old_and_new_name_together_or_unknown_arguments_are_errors(tiny_model):
    with pytest.raises(TypeError, match="give criterion= only"):
        SelectiveGradientAscent(copy.deepcopy(tiny_model), stop="mean", criterion="mean")
    with pytest.raises(TypeError, match="unexpected arguments: refresh_evry"):
        UnlearningModule(copy.deepcopy(tiny_model), refresh_evry=2)


def test_the_old_threshold_name_is_the_holdout_mean():
    with pytest.warns(FutureWarning, match='threshold="holdout" is deprecated.*threshold="holdout_mean"'):
        assert MemorizationEarlyStopping(threshold="holdout").threshold == "holdout_mean"
    with pytest.warns(FutureWarning):
        assert check_threshold("holdout", "memorization_report") == "holdout_mean"
    assert MemorizationEarlyStopping().threshold == "holdout_quantile"  # one default level everywhere
    with pytest.raises(ValueError, match="threshold must be 'holdout_quantile', 'holdout_mean' or a float"):
        check_threshold("median", "x")
