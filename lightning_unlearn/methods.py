"""The methods by name, one registry for ``lightning-unlearn unlearn --method``, :func:`lightning_unlearn.unlearn` and
the demo's rows. Each method registers beside its class (:func:`~lightning_unlearn.modules.registry.register`), with
its paper's (or open-unlearning's) settings for real models cited there. The testbed's own, larger learning rates (a
1M-parameter model trained from scratch) are explicit overrides in
:data:`lightning_unlearn.testbed.settings.TESTBED_SETTINGS`, which the demo applies."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback
from transformers import PreTrainedModel

import lightning_unlearn.modules  # noqa: F401  (each method's module registers it)
from lightning_unlearn.modules.base import UnlearningModule
from lightning_unlearn.modules.registry import METHODS, Method
from lightning_unlearn.utilities.errors import ConfigurationError

__all__ = ["METHODS", "Method", "check_method", "make_method"]


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
