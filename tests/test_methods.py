"""The methods by name: the settings each one brings, and the callbacks that stop the ones without their own."""

from __future__ import annotations

import copy
import inspect
import re
import sys

import lightning as L
import pytest

from lightning_unlearn.callbacks import MemorizationEarlyStopping, SelectiveAscent
from lightning_unlearn.methods import METHODS, make_method
from lightning_unlearn.modules import (
    CEU,
    NPO,
    RMU,
    TAU,
    UNDIAL,
    WGA,
    GradientAscent,
    GradientDifference,
    SatImp,
    SelectiveGradientAscent,
    SimNPO,
    TaskArithmetic,
)
from lightning_unlearn.modules.registry import register
from lightning_unlearn.modules.rmu import decoder_layers
from tests.conftest import make_trainer, unlearning_data
from tests.helpers.peak_memory import HostCopies, PeakTensorMemory


def test_every_method_is_stopped_by_its_rule(tiny_model):
    """Every method by the per-sample rule, but ga-mean (Jang et al.'s mean rule, the demo's baseline)."""
    kinds = {
        "sga-kl": SelectiveGradientAscent,
        "sga": SelectiveGradientAscent,
        "npo-kl": NPO,
        "ta": TaskArithmetic,
        "tau": TAU,
        "sga-kl-ra": SelectiveGradientAscent,
        "sga-kl-sam": SelectiveGradientAscent,
        "ga": GradientAscent,
        "ga-mean": GradientAscent,
        "gd": GradientDifference,
        "simnpo-kl": SimNPO,
        "wga": WGA,
        "satimp": SatImp,
        "ce-u": CEU,
        "undial": UNDIAL,
        "rmu": RMU,
    }
    assert set(METHODS) == set(kinds)
    for name, kind in kinds.items():
        module, callbacks = make_method(name, copy.deepcopy(tiny_model))
        assert type(module) is kind
        stopping = [cb for cb in callbacks if isinstance(cb, MemorizationEarlyStopping)]
        stopping = stopping or [module.stopping]  # SGA, TA and TAU bring theirs
        rule = ("mean", "holdout_mean") if name == "ga-mean" else ("max", "holdout_quantile")
        assert (stopping[0].criterion, stopping[0].threshold) == rule, name
        assert module.needs_retain == METHODS[name].needs_retain
    ga = make_method("ga", copy.deepcopy(tiny_model))[1]
    assert not any(isinstance(cb, SelectiveAscent) for cb in ga)  # plain GA ascends every record
    assert make_method("sga-kl-ra", copy.deepcopy(tiny_model))[0].hparams.adversary_steps == 4
    assert make_method("sga-kl-sam", copy.deepcopy(tiny_model))[0].hparams.sharpness == 0.05


def test_method_settings_are_their_papers_and_options_override_them(tiny_model):
    """The registry's settings are within the ranges their sources use (learning rates 1e-5 to 1e-4, NPO's β 0.1,
    RMU's α 1200 at the authors' layer 7, clamped to a shallower model's last); the testbed's tuned values are
    overrides that only the testbed applies."""
    from lightning_unlearn.demo import testbed_method
    from lightning_unlearn.testbed.settings import TESTBED_SETTINGS

    module, _ = make_method("sga-kl", copy.deepcopy(tiny_model))
    assert (module.hparams.retain_loss, module.hparams.retain_weight, module.hparams.learning_rate) == ("kl", 3.0, 5e-5)
    npo, _ = make_method("npo-kl", copy.deepcopy(tiny_model), retain_weight=2.0)
    assert (npo.beta, npo.hparams.learning_rate, npo.hparams.retain_weight) == (0.1, 1e-5, 2.0)
    assert make_method("ta", copy.deepcopy(tiny_model))[0].hparams.learning_rate == 5e-5
    assert make_method("tau", copy.deepcopy(tiny_model))[0].hparams.learning_rate == 1e-4
    for name in METHODS:
        assert 1e-5 <= make_method(name, copy.deepcopy(tiny_model))[0].hparams.learning_rate <= 1e-4, name
    rmu = make_method("rmu", copy.deepcopy(tiny_model))[0]
    assert rmu.hparams.retain_weight == 1200.0 and rmu.steered_layer() is decoder_layers(rmu.model)[-1]
    assert testbed_method("npo-kl")(copy.deepcopy(tiny_model)).beta == 0.01
    # The default ascends the tokens still predicted on real models, the whole record on the testbed (its tables).
    assert module.tokens == module.hparams.tokens == "hits" and testbed_method("sga-kl")(tiny_model).tokens == "all"
    with pytest.raises(ValueError, match="tokens must be 'all' or 'hits'"):
        make_method("sga-kl", copy.deepcopy(tiny_model), tokens="some")
    assert testbed_method("ta")(copy.deepcopy(tiny_model), learning_rate=1e-3).hparams.learning_rate == 1e-3
    assert set(TESTBED_SETTINGS) <= set(METHODS)
    choices = "sga-kl, sga, sga-kl-ra, sga-kl-sam, ga, ga-mean, gd, wga, satimp, npo-kl, simnpo-kl, rmu, undial, "
    choices += "ce-u, ta, tau"  # in the order the modules register them
    with pytest.raises(ValueError, match=f"unknown method 'dpo'; choose from {choices}"):
        make_method("dpo", tiny_model)


def test_each_method_registers_once_beside_its_class():
    """Every registry row is registered in its class's own file (peft-style: one line per method, beside the class);
    every exported method class is reachable by name; a name registers once."""
    import lightning_unlearn.modules as modules

    for name, method in METHODS.items():
        source = inspect.getsource(sys.modules[method.cls.__module__])
        assert re.search(rf'register\(\s*(#[^\n]*\n\s*)?"{re.escape(name)}",\s*{method.cls.__name__},', source), name
    exported = {getattr(modules, name) for name in modules.__all__} - {modules.UnlearningModule, modules.ForwardOutput}
    assert {cls for cls in exported if isinstance(cls, type)} - {m.cls for m in METHODS.values()} == set()
    with pytest.raises(ValueError, match="'sga' is registered twice"):
        register("sga", GradientAscent, "again")


class StepCycle(L.Callback):
    """The second step cycle (its training step and the scoring after it, up to the third step's start): bytes
    copied to the CPU and the peak of tensor memory allocated in it."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 1:
            self.peak, self.copies = PeakTensorMemory(), HostCopies()
            self.peak.__enter__(), self.copies.__enter__()
        elif trainer.global_step == 2:
            self.copies.__exit__(None, None, None), self.peak.__exit__(None, None, None)


def _step_cycle(testbed, method: str) -> StepCycle:
    options = {"learning_rate": 1e-5} | ({"switch_at": 1.0} if method == "tau" else {})  # TAU: its TA phase
    module, callbacks = make_method(method, copy.deepcopy(testbed.model), **options)
    cycle = StepCycle()
    make_trainer(max_steps=3, callbacks=[*callbacks, cycle]).fit(module, unlearning_data(testbed))
    return cycle


def test_no_method_copies_the_model_to_the_host_in_a_step(small_testbed):
    """Every method's step cycle after the first: host copies at most 10% of the parameter bytes (TA and TAU used
    to copy every edited weight to the CPU and back to score their edit), and a peak of tensor memory within SGA's
    plus 10% of the parameter bytes (TA and TAU: plus one copy of the edited weights), the retain pass aside."""
    parameters = sum(p.nbytes for p in small_testbed.model.parameters())
    sga = _step_cycle(small_testbed, "sga")
    for method in METHODS:
        cycle = sga if method == "sga" else _step_cycle(small_testbed, method)
        edited = parameters if method in ("ta", "tau") else 0  # every weight is edited without an adapter
        assert cycle.copies.bytes <= 0.1 * parameters, (method, cycle.copies.bytes / parameters)
        if not METHODS[method].needs_retain:
            assert cycle.peak.peak <= sga.peak.peak + edited + 0.1 * parameters, (method, cycle.peak.peak / parameters)
