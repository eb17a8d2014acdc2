"""The methods by name, one registry for ``lightning-unlearn unlearn --method``, :func:`lightning_unlearn.unlearn` and
the demo's rows: each a module with its paper's (or open-unlearning's) settings for real models, cited beside it, and
the callbacks that stop it. The testbed's own, larger learning rates (a 1M-parameter model trained from scratch) are
explicit overrides in :data:`lightning_unlearn.testbed.settings.TESTBED_SETTINGS`, which the demo applies."""

from __future__ import annotations

import inspect
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
    """A method by name: its module class ``cls`` with ``settings`` (module arguments the caller's options override);
    ``callbacks()`` adds the per-sample control that the module does not bring itself (SGA, TA and TAU bring theirs)."""

    description: str
    cls: type[UnlearningModule]
    settings: dict[str, Any] = field(default_factory=dict)
    callbacks: Callable[[], list[Callback]] = field(default=list)
    in_demo: bool = True  # a row of ``lightning-unlearn demo`` by default (the others on request: ``--methods``)

    def make(self, model: PreTrainedModel | str, **options: Any) -> UnlearningModule:
        """The module on ``model``, with ``options`` over the settings; a clear error for an option it does not take."""
        unknown = sorted(set(options) - accepted_options(self.cls))
        if unknown:
            raise ConfigurationError(f"{self.cls.__name__} got unexpected arguments: {', '.join(unknown)}")
        return self.cls(model, **{**self.settings, **options})

    @property
    def needs_retain(self) -> bool:
        """Whether the method trains on retain texts, from its retain term (the settings', else the class's default)."""
        return self.settings.get("retain_loss", option_default(self.cls, "retain_loss")) is not None


def accepted_options(cls: type) -> set[str]:
    """The keyword arguments ``cls(model, ...)`` takes: its ``__init__``'s and, through ``**kwargs``, its bases'."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in parameters if p.kind is not p.VAR_KEYWORD and p.name not in ("self", "model")}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def option_default(cls: type, name: str) -> Any:
    """The default of keyword argument ``name`` of ``cls(model, ...)`` (the most derived ``__init__`` naming it)."""
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            parameter = inspect.signature(vars(klass)["__init__"]).parameters.get(name)
            if parameter is not None:
                return parameter.default
    raise KeyError(name)


#: The methods by name (``--method``, ``unlearn(method=)``, the demo's rows), in the order the demo runs them.
METHODS: dict[str, Method] = {
    # tokens="hits": on a pretrained LM (SmolLM2-135M, docs/benchmarks.md) ascending whole records pushed them far below
    # unseen text (LOSS AUC 0.18, holdout NLL 1.68x); ascending only the tokens still predicted met the same rule
    # with AUC 0.55 and 1.07x (lr 5e-5, the seed paper's; KL weight 3).
    "sga-kl": Method(
        "selective gradient ascent on the tokens still predicted + KL to the original model (recommended)",
        SelectiveGradientAscent,
        dict(retain_loss="kl", retain_weight=3.0, tokens="hits"),
    ),
    "sga": Method("selective gradient ascent, no retain term (costs more utility)", SelectiveGradientAscent),
    "npo-kl": Method(  # β 0.1, lr 1e-5: Zhang et al. 2024 and open-unlearning's NPO (the module's defaults)
        "selective NPO (β = 0.1) + KL retain",
        NPO,
        dict(retain_loss="kl", retain_weight=1.0),
        callbacks=per_sample_control,
    ),
    "ta": Method("task arithmetic, λ = −3", TaskArithmetic),  # lr 5e-5, the seed paper's (the module's default)
    "tau": Method("SGA, then task arithmetic with λ searched in [−3, 0)", TAU),
    "sga-kl-ra": Method(
        "relearning-aware SGA + KL: each step's loss after 4 simulated relearning steps (3x the time)",
        SelectiveGradientAscent,
        dict(
            retain_loss="kl",
            retain_weight=5.0,
            adversary_steps=4,
            adversary_learning_rate=5e-4,
        ),
        in_demo=False,
    ),
    "sga-kl-sam": Method(
        "sharpness-aware SGA + KL: each step's loss at the worst point within ρ = 0.05 of the weights (2x the time)",
        SelectiveGradientAscent,
        dict(retain_loss="kl", retain_weight=3.0, sharpness=0.05),
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
        GradientDifference,
        dict(learning_rate=1e-5),
        callbacks=lambda: per_sample_control(select=False),
        in_demo=False,
    ),
    "simnpo-kl": Method(  # β 4.5, δ 0: Fan et al. 2024 (the module's defaults); lr 1e-5: open-unlearning on TOFU
        "selective SimNPO (β = 4.5, no reference model) + KL retain",
        SimNPO,
        dict(learning_rate=1e-5, retain_loss="kl", retain_weight=1.0),
        callbacks=per_sample_control,
        in_demo=False,
    ),
    "wga": Method(
        "selective WGA (token weights p^β, β = 1) + KL retain",
        WGA,
        dict(retain_loss="kl", retain_weight=3.0),
        callbacks=per_sample_control,
        in_demo=False,
    ),
    "satimp": Method(  # lr 1e-5: open-unlearning's unlearning rate on TOFU (SatImp's own config not re-read)
        "selective SatImp (token weights p^5 · (1 − p)) + KL retain, lr 1e-5",
        SatImp,
        dict(learning_rate=1e-5, retain_loss="kl", retain_weight=0.3),
        callbacks=per_sample_control,
        in_demo=False,
    ),
    "ce-u": Method(
        "selective CE-U (cross-entropy without the target token) + KL retain",
        CEU,
        dict(retain_loss="kl", retain_weight=3.0),
        callbacks=per_sample_control,
        in_demo=False,
    ),
    "undial": Method(  # lr 1e-4: Dong et al. 2025 (Llama-2 7B), open-unlearning searches 1e-5 to 3e-4
        "selective UNDIAL (distil the original, target logit − 10) + KL retain, lr 1e-4",
        UNDIAL,
        dict(learning_rate=1e-4, retain_loss="kl", retain_weight=1.0),
        callbacks=per_sample_control,
        in_demo=False,
    ),
    "rmu": Method(  # layer 7, α 1200, lr 5e-5: Li et al. 2024's code on Zephyr-7B (the module's defaults)
        "selective RMU (steer layer 7 to a random direction, keep the retain records'; α = 1200, lr 5e-5)",
        RMU,
        dict(learning_rate=5e-5),
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
    except ConfigurationError as error:  # an option the method does not take, or a value it refuses
        raise ConfigurationError(f"{name}: {error}") from error
    return module, method.callbacks()
