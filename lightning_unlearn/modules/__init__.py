"""Unlearning methods as LightningModules: one small class per method over :class:`UnlearningModule`."""

from lightning_unlearn.modules.base import UnlearningModule, check_causal_lm, load_causal_lm
from lightning_unlearn.modules.gradient import GradientAscent, GradientDifference, SelectiveGradientAscent

__all__ = [
    "GradientAscent",
    "GradientDifference",
    "SelectiveGradientAscent",
    "UnlearningModule",
    "check_causal_lm",
    "load_causal_lm",
]
