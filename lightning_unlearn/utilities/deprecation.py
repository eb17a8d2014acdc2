"""Old spellings that keep working for one release, with a warning that names the new one."""

from __future__ import annotations

import sys
import types
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


#: Modules of the flat layout before 0.2 -> the modules their names live in now (searched in order).
MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "memorization": ("functional.memorization", "evaluation.scoring"),
    "losses": ("functional.losses",),
    "thresholds": ("functional.thresholds",),
    "attacks": ("functional.membership", "evaluation.membership"),
    "robustness": ("evaluation.recovery", "data"),
    "report": ("evaluation.report",),
    "utility": ("evaluation.utility",),
    "strategies": ("distributed.zero",),
    "checkpoints": ("distributed.checkpoints",),
    "models": ("integrations.huggingface",),
    "training_mode": ("integrations.training_mode",),
    "adapters": ("integrations.peft",),
    "files": ("utilities.files",),
    "extras": ("utilities.extras",),
    "deprecation": ("utilities.deprecation",),
    "reference": ("modules.reference",),
    "adversary": ("modules.adversary",),
    "task_vectors": ("modules.task_vectors",),
    "demo": ("testbed.demo",),
    "lightning_cli": ("cli.lightning_cli",),
    "callbacks.attacks": ("callbacks.membership",),
    "callbacks.robustness": ("callbacks.recovery",),
}
#: Names given one word per concept in 0.2: membership attacks, recovery attacks, the threshold.
RENAMED: dict[str, str] = {
    "attack_auc": "membership_auc",
    "attack_scores": "membership_scores",
    "ATTACKS": "MEMBERSHIP_ATTACKS",
    "AttackMonitor": "MembershipMonitor",
    "ATTACK_NAMES": "RECOVERY_ATTACKS",
    "attacked_scores": "recovery_scores",
    "robustness_summary": "recovery_summary",
    "check_attacks": "check_recovery_attacks",
    "RobustnessCheck": "RecoveryCheck",
    "holdout_level": "holdout_threshold",
}


def moved(old_module: str, name: str, new_modules: tuple[str, ...]) -> Any:
    """``name`` of the old module ``lightning_unlearn.<old_module>``, found under its new name in ``new_modules``
    (relative to the package), with a ``FutureWarning`` that says where it is now."""
    import importlib

    new_name = RENAMED.get(name, name)
    for module in new_modules:
        value = getattr(importlib.import_module(f"lightning_unlearn.{module}"), new_name, None)
        if value is not None:
            warn_renamed(
                "lightning-unlearn", f"lightning_unlearn.{old_module}.{name}", f"lightning_unlearn.{module}.{new_name}"
            )
            return value
    raise AttributeError(f"module 'lightning_unlearn.{old_module}' has no attribute {name!r}")


class _MovedModule(types.ModuleType):
    """A module of the old layout: every attribute comes from the new modules, with a warning."""

    def __init__(self, old_module: str, new_modules: tuple[str, ...]) -> None:
        super().__init__(
            f"lightning_unlearn.{old_module}", f"Moved in lightning-unlearn 0.2: see {', '.join(new_modules)}."
        )
        self._new_modules = new_modules

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return moved(self.__name__.removeprefix("lightning_unlearn."), name, self._new_modules)


def install_moved_modules() -> None:
    """Makes ``lightning_unlearn.<old module>`` importable for one release: ``from lightning_unlearn.memorization import
    score_memorization`` still works and warns where the name lives now. Nothing is imported until a name is used."""
    package = sys.modules["lightning_unlearn"]
    for old_module, new_modules in MOVED_MODULES.items():
        module = sys.modules.setdefault(f"lightning_unlearn.{old_module}", _MovedModule(old_module, new_modules))
        if (
            "." not in old_module
        ):  # lightning_unlearn.memorization as an attribute too (callbacks' own: its __getattr__)
            setattr(package, old_module, module)
