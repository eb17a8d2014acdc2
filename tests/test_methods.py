"""The methods by name: the settings each one brings, and the callbacks that stop the ones without their own."""

from __future__ import annotations

import copy

import pytest

from lightning_unlearn.callbacks import MemorizationEarlyStopping, SelectiveAscent
from lightning_unlearn.methods import METHODS, make_method
from lightning_unlearn.modules import NPO, TAU, GradientAscent, SelectiveGradientAscent, TaskArithmetic


def test_every_method_is_stopped_by_the_per_sample_rule(tiny_model):
    kinds = {
        "sga-kl": SelectiveGradientAscent,
        "sga": SelectiveGradientAscent,
        "npo-kl": NPO,
        "ta": TaskArithmetic,
        "tau": TAU,
        "ga": GradientAscent,
    }
    assert set(METHODS) == set(kinds)
    for name, kind in kinds.items():
        module, callbacks = make_method(name, copy.deepcopy(tiny_model))
        assert type(module) is kind
        stopping = [cb for cb in callbacks if isinstance(cb, MemorizationEarlyStopping)]
        stopping = stopping or [module.stopping]  # SGA, TA and TAU bring theirs
        assert stopping[0].criterion == "max" and stopping[0].threshold == "holdout_quantile", name
        assert module.needs_retain == METHODS[name].needs_retain
    ga = make_method("ga", copy.deepcopy(tiny_model))[1]
    assert not any(isinstance(cb, SelectiveAscent) for cb in ga)  # plain GA ascends every record


def test_method_settings_are_the_ones_that_meet_the_rule_and_options_override_them(tiny_model):
    module, _ = make_method("sga-kl", copy.deepcopy(tiny_model))
    assert (module.hparams.retain_loss, module.hparams.retain_weight, module.hparams.learning_rate) == ("kl", 3.0, 5e-5)
    npo, _ = make_method("npo-kl", copy.deepcopy(tiny_model), retain_weight=2.0)
    assert (npo.beta, npo.hparams.learning_rate, npo.hparams.retain_weight) == (0.01, 1e-4, 2.0)
    assert make_method("ta", copy.deepcopy(tiny_model))[0].hparams.learning_rate == 3e-4
    assert make_method("tau", copy.deepcopy(tiny_model))[0].hparams.learning_rate == 1e-4
    with pytest.raises(ValueError, match="unknown method 'dpo'; choose from sga-kl, sga, npo-kl, ta, tau, ga"):
        make_method("dpo", tiny_model)
