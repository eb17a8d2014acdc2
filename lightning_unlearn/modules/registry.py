"""Where the methods register by name, each beside its class: one :func:`register` line per method, with the settings
of its paper (or open-unlearning) for real models cited beside it. :data:`lightning_unlearn.methods.METHODS` is
the table they fill, in the order the modules are imported."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback
from transformers import PreTrainedModel

from lightning_unlearn.utilities.errors import ConfigurationError

if TYPE_CHECKING:
    from lightning_unlearn.modules.base import UnlearningModule


@dataclass(frozen=True)
class Method:
    """A method by name: its module class ``cls`` with ``settings`` (module arguments the caller's options override);
    ``callbacks()`` adds the per-sample control that the module does not bring itself (SGA, TA and TAU bring theirs)."""

    description: str
    cls: type[UnlearningModule]
    settings: dict[str, Any] = field(default_factory=dict)
    callbacks: Callable[[], list[Callback]] = field(default=list)

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


#: The methods by name, as :func:`register` fills it (``lightning_unlearn.methods.METHODS``).
METHODS: dict[str, Method] = {}


def register(
    name: str,
    cls: type[UnlearningModule],
    description: str,
    callbacks: Callable[[], list[Callback]] = list,
    **settings: Any,
) -> None:
    """Registers method ``name``: ``cls`` with ``settings`` (its module arguments), described in one line, with the
    per-sample control ``callbacks()`` that ``cls`` does not bring itself. A name registers once."""
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    METHODS[name] = Method(description, cls, settings, callbacks)


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
