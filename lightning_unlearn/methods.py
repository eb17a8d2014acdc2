"""The methods by name, as ``lightning-unlearn unlearn --method`` and :func:`lightning_unlearn.unlearn` take them:
each a module with the settings that meet the per-sample rule on the testbed, and the callbacks that stop it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch.callbacks import Callback
from transformers import PreTrainedModel

from lightning_unlearn.callbacks import per_sample_control
from lightning_unlearn.modules import (
    NPO,
    TAU,
    GradientAscent,
    SelectiveGradientAscent,
    TaskArithmetic,
    UnlearningModule,
)


@dataclass(frozen=True)
class Method:
    """A method by name: ``make(model, **options)`` builds its module; ``callbacks()`` adds the per-sample control
    that the module does not bring itself (SGA, TA and TAU bring theirs)."""

    description: str
    make: Callable[..., UnlearningModule]
    needs_retain: bool = False
    callbacks: Callable[[], list[Callback]] = field(default=list)


def _with(cls: type[UnlearningModule], **settings: Any) -> Callable[..., UnlearningModule]:
    """``cls`` with ``settings`` as defaults that the caller's options override."""
    return lambda model, **options: cls(model, **{**settings, **options})


METHODS: dict[str, Method] = {
    "sga-kl": Method(
        "selective gradient ascent + KL to the original model on the retain texts (recommended)",
        _with(SelectiveGradientAscent, retain_loss="kl", retain_weight=3.0),
        needs_retain=True,
    ),
    "sga": Method("selective gradient ascent, no retain term (costs more utility)", SelectiveGradientAscent),
    "npo-kl": Method(
        "selective NPO (β = 0.01) + KL retain",
        _with(NPO, retain_loss="kl", retain_weight=1.0),
        needs_retain=True,
        callbacks=per_sample_control,
    ),
    "ta": Method("task arithmetic, λ = −3", TaskArithmetic),
    "tau": Method("SGA, then task arithmetic with λ searched in [−3, 0)", TAU),
    "ga": Method(
        "gradient ascent, stopped by the per-sample rule",
        GradientAscent,
        callbacks=lambda: per_sample_control(select=False),
    ),
}


def check_method(name: str) -> Method:
    """The method called ``name``; a clear error naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def make_method(name: str, model: PreTrainedModel | str, **options: Any) -> tuple[UnlearningModule, list[Callback]]:
    """The module of method ``name`` on ``model`` (``options``: module arguments that override its settings) and
    the callbacks to give its Trainer."""
    method = check_method(name)
    return method.make(model, **options), method.callbacks()
