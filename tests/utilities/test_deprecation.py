"""Old spellings keep working for one release, with a FutureWarning that names the new one."""

from __future__ import annotations

import copy

import pytest

from lightning_unlearn.callbacks import MemorizationEarlyStopping
from lightning_unlearn.functional.thresholds import check_threshold
from lightning_unlearn.modules import GradientDifference, SelectiveGradientAscent, TaskArithmetic, UnlearningModule


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


# Every name the README showed before 0.2 at a path that moved (or under a name one word per concept replaced).
MOVED_IN_0_2 = {
    "lightning_unlearn.memorization": [
        "memorization_accuracy",
        "extraction_likelihood",
        "verbatim_extraction",
        "score_memorization",
        "sequence_nll",
        "nll_and_accuracy",
    ],
    "lightning_unlearn.thresholds": [
        "holdout_level",
        "holdout_band",
        "bootstrap_interval",
        "empirical_p_values",
        "benjamini_hochberg",
    ],
    "lightning_unlearn.attacks": ["loss_attack", "zlib_attack", "min_k_attack", "NeighbourhoodAttack", "attack_auc"],
    "lightning_unlearn.losses": ["npo_loss", "simnpo_loss", "token_kl"],
    "lightning_unlearn.robustness": ["attacked_scores", "quantize", "relearn", "robustness_summary"],
    "lightning_unlearn.report": ["memorization_report", "write_report"],
    "lightning_unlearn.utility": ["evaluate_utility", "write_record_tasks"],
    "lightning_unlearn.strategies": ["deepspeed_config"],
    "lightning_unlearn.checkpoints": ["AtomicCheckpointIO", "AtomicDeepSpeedStrategy"],
    "lightning_unlearn.callbacks": ["AttackMonitor", "RobustnessCheck"],
}


@pytest.mark.parametrize(("module", "name"), [(m, n) for m, names in MOVED_IN_0_2.items() for n in names])
def test_every_name_the_readme_showed_still_imports_with_a_warning_that_says_where_it_is(module, name):
    import importlib

    namespace: dict = {}
    with pytest.warns(FutureWarning, match=rf"{module}\.{name} is deprecated.*use lightning_unlearn\.\w+"):
        exec(f"from {module} import {name}", namespace)
    with pytest.warns(FutureWarning) as record:
        old = getattr(importlib.import_module(module), name)
    new_path = str(record[0].message).rsplit("use ", 1)[1]
    new_module, _, new_name = new_path.rpartition(".")
    assert old is getattr(importlib.import_module(new_module), new_name) is namespace[name]


def test_the_names_that_did_not_move_import_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from lightning_unlearn import (
            NPO,
            SelectiveGradientAscent,
            SimNPO,
            UnlearningDataModule,
            UnlearningModule,
            unlearn,
        )
        from lightning_unlearn.callbacks import MemorizationEarlyStopping as Stopping
        from lightning_unlearn.callbacks import MemorizationMonitor, UtilityEvaluation, per_sample_control
        from lightning_unlearn.metrics import ExtractionLikelihood, MemorizationAccuracy, MemorizationOutliers
        from lightning_unlearn.testbed import build_testbed, make_records
    assert all([NPO, SelectiveGradientAscent, SimNPO, UnlearningDataModule, UnlearningModule, unlearn, Stopping])
    assert all([MemorizationMonitor, UtilityEvaluation, per_sample_control, build_testbed, make_records])
    assert all([ExtractionLikelihood, MemorizationAccuracy, MemorizationOutliers])
