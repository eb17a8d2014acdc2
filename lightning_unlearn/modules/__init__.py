"""Unlearning methods as LightningModules: one small class per method over :class:`UnlearningModule`."""

from lightning_unlearn.models import check_causal_lm, load_causal_lm
from lightning_unlearn.modules.base import UnlearningModule
from lightning_unlearn.modules.gradient import GradientAscent, GradientDifference, SelectiveGradientAscent
from lightning_unlearn.modules.npo import NPO, SimNPO
from lightning_unlearn.modules.task_arithmetic import TAU, TaskArithmetic

__all__ = [
    "NPO",
    "TAU",
    "GradientAscent",
    "GradientDifference",
    "SelectiveGradientAscent",
    "SimNPO",
    "TaskArithmetic",
    "UnlearningModule",
    "check_causal_lm",
    "load_causal_lm",
]
