"""The methods by name, one registry for ``lightning-unlearn unlearn --method``, :func:`lightning_unlearn.unlearn` and
the demo's rows: each a module with its paper's (or open-unlearning's) settings for real models, cited beside it, and
the callbacks that stop it. The testbed's own, larger learning rates (a 1M-parameter model trained from scratch) are
explicit overrides in :data:`lightning_unlearn.testbed.settings.TESTBED_SETTINGS`, which the demo applies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch.callbacks import Callback
from transformers import PreTrainedModel

from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor, per_sample_control
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
    UnlearningModule,
)
from lightning_unlearn.utilities.errors import ConfigurationError


@dataclass(frozen=True)
class Method:
    """A method by name: ``make(model, **options)`` builds its module; ``callbacks()`` adds the per-sample control
    that the module does not bring itself (SGA, TA and TAU bring theirs)."""

    description: str
    make: Callable[..., UnlearningModule]
    needs_retain: bool = False
    callbacks: Callable[[], list[Callback]] = field(default=list)
    in_demo: bool = True  # a row of ``lightning-unlearn demo`` by default (the others on request: ``--methods``)


def _with(cls: type[UnlearningModule], **settings: Any) -> Callable[..., UnlearningModule]:
    """``cls`` with ``settings`` as defaults that the caller's options override."""
    return lambda model, **options: cls(model, **{**settings, **options})


#: The methods by name (``--method``, ``unlearn(method=)``, the demo's rows), in the order the demo runs them.
METHODS: dict[str, Method] = {
    # tokens="hits": on a pretrained LM (SmolLM2-135M, docs/benchmarks.md) ascending whole records pushed them far below
    # unseen text (LOSS AUC 0.18, holdout NLL 1.68x); ascending only the tokens still predicted met the same rule
    # with AUC 0.55 and 1.07x (lr 5e-5, the seed paper's; KL weight 3).
    "sga-kl": Method(
        "selective gradient ascent on the tokens still predicted + KL to the original model (recommended)",
        _with(SelectiveGradientAscent, retain_loss="kl", retain_weight=3.0, tokens="hits"),
        needs_retain=True,
    ),
    "sga": Method("selective gradient ascent, no retain term (costs more utility)", SelectiveGradientAscent),
    "npo-kl": Method(  # β 0.1, lr 1e-5: Zhang et al. 2024 and open-unlearning's NPO (the module's defaults)
        "selective NPO (β = 0.1) + KL retain",
        _with(NPO, retain_loss="kl", retain_weight=1.0),
        needs_retain=True,
        callbacks=per_sample_control,
    ),
    "ta": Method("task arithmetic, λ = −3", TaskArithmetic),  # lr 5e-5, the seed paper's (the module's default)
    "tau": Method("SGA, then task arithmetic with λ searched in [−3, 0)", TAU),
    "sga-kl-ra": Method(
        "relearning-aware SGA + KL: each step's loss after 4 simulated relearning steps (3x the time)",
        _with(
            SelectiveGradientAscent,
            retain_loss="kl",
            retain_weight=5.0,
            adversary_steps=4,
            adversary_learning_rate=5e-4,
        ),
        needs_retain=True,
        in_demo=False,
    ),
    "sga-kl-sam": Method(
        "sharpness-aware SGA + KL: each step's loss at the worst point within ρ = 0.05 of the weights (2x the time)",
        _with(SelectiveGradientAscent, retain_loss="kl", retain_weight=3.0, sharpness=0.05),
        needs_retain=True,
        in_demo=False,
    ),
    "ga": Method(
        "gradient ascent, stopped by the per-sample rule",
        GradientAscent,
        callbacks=lambda: per_sample_control(select=False),
        in_demo=False,
    ),
    "ga-mean": Method(
        "gradient ascent, stopped by the mean rule (Jang et al.): mean g at or below the holdout's mean",
        GradientAscent,
        callbacks=lambda: [
            MemorizationMonitor(),
            MemorizationEarlyStopping(criterion="mean", threshold="holdout_mean"),
        ],
    ),
    "gd": Method(  # α 1, lr 1e-5: open-unlearning's GradDiff (its default unlearning rate on TOFU)
        "gradient difference (ascent on the forget records, NLL descent on the retain records), per-sample rule",
        _with(GradientDifference, learning_rate=1e-5),
        needs_retain=True,
        callbacks=lambda: per_sample_control(select=False),
        in_demo=False,
    ),
    "simnpo-kl": Method(  # β 4.5, δ 0: Fan et al. 2024 (the module's defaults); lr 1e-5: open-unlearning on TOFU
        "selective SimNPO (β = 4.5, no reference model) + KL retain",
        _with(SimNPO, learning_rate=1e-5, retain_loss="kl", retain_weight=1.0),
        needs_retain=True,
        callbacks=per_sample_control,
        in_demo=False,
    ),
    "wga": Method(
        "selective WGA (token weights p^β, β = 1) + KL retain",
        _with(WGA, retain_loss="kl", retain_weight=3.0),
        needs_retain=True,
        callbacks=per_sample_control,
        in_demo=False,
    ),
    "satimp": Method(  # lr 1e-5: open-unlearning's unlearning rate on TOFU (SatImp's own config not re-read)
        "selective SatImp (token weights p^5 · (1 − p)) + KL retain, lr 1e-5",
        _with(SatImp, learning_rate=1e-5, retain_loss="kl", retain_weight=0.3),
        needs_retain=True,
        callbacks=per_sample_control,
        in_demo=False,
    ),
    "ce-u": Method(
        "selective CE-U (cross-entropy without the target token) + KL retain",
        _with(CEU, retain_loss="kl", retain_weight=3.0),
        needs_retain=True,
        callbacks=per_sample_control,
        in_demo=False,
    ),
    "undial": Method(  # lr 1e-4: Dong et al. 2025 (Llama-2 7B), open-unlearning searches 1e-5 to 3e-4
        "selective UNDIAL (distil the original, target logit − 10) + KL retain, lr 1e-4",
        _with(UNDIAL, learning_rate=1e-4, retain_loss="kl", retain_weight=1.0),
        needs_retain=True,
        callbacks=per_sample_control,
        in_demo=False,
    ),
    "rmu": Method(  # layer 7, α 1200, lr 5e-5: Li et al. 2024's code on Zephyr-7B (the module's defaults)
        "selective RMU (steer layer 7 to a random direction, keep the retain records'; α = 1200, lr 5e-5)",
        _with(RMU, learning_rate=5e-5),
        needs_retain=True,
        callbacks=per_sample_control,
        in_demo=False,
    ),
}


def check_method(name: str) -> Method:
    """The method called ``name``; a clear error naming the choices otherwise."""
    if name not in METHODS:
        raise ConfigurationError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def make_method(name: str, model: PreTrainedModel | str, **options: Any) -> tuple[UnlearningModule, list[Callback]]:
    """The module of method ``name`` on ``model`` (``options``: module arguments that override its settings) and
    the callbacks to give its Trainer."""
    method = check_method(name)
    try:
        module = method.make(model, **options)
    except TypeError as error:
        if "argument" not in str(error):
            raise
        raise ConfigurationError(f"{name}: {error}") from error  # an option the method does not take
    return module, method.callbacks()
