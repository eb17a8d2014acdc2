"""Old spellings that keep working for one release, with a warning that names the new one."""

from __future__ import annotations

import warnings
from typing import Any


def warn_renamed(owner: str, old: str, new: str) -> None:
    """Warns once per call site that ``old`` is ``new`` now (a ``FutureWarning``, shown by default)."""
    warnings.warn(f"{owner}: {old} is deprecated and will be removed; use {new}", FutureWarning, stacklevel=3)


def renamed_argument(kwargs: dict[str, Any], owner: str, old: str, new: str, value: Any, default: Any) -> Any:
    """The value of argument ``new`` when a caller may still pass it as ``old`` (popped from ``kwargs``): the old
    one wins if given alone, with a warning; giving both is an error."""
    if old not in kwargs:
        return value
    if value != default:
        raise TypeError(f"{owner}: give {new}= only ({old}= is its old name)")
    warn_renamed(owner, f"{old}=", f"{new}=")
    return kwargs.pop(old)
