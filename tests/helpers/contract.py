"""The extension contract, checked: a method class overrides public hooks only."""

from __future__ import annotations

from lightning_unlearn.modules import UnlearningModule


def private_overrides(cls: type) -> list[str]:
    """The private names (``_x``, not dunders) that ``cls`` or a class between it and :class:`UnlearningModule`
    defines and :class:`UnlearningModule` (or a base of it) also has: overrides of the base's private parts."""
    overridden = []
    for klass in cls.__mro__:
        if klass is UnlearningModule or not issubclass(klass, UnlearningModule):
            break
        for name in vars(klass):
            private = name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            if private and hasattr(UnlearningModule, name):
                overridden.append(f"{klass.__name__}.{name}")
    return overridden
