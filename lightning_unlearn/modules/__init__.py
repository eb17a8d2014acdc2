"""Unlearning methods as LightningModules: one small class per method over :class:`UnlearningModule`."""

from lightning_unlearn.integrations.huggingface import check_causal_lm, load_causal_lm
from lightning_unlearn.modules.base import UnlearningModule
from lightning_unlearn.modules.gradient import WGA, GradientAscent, GradientDifference, SatImp, SelectiveGradientAscent
from lightning_unlearn.modules.npo import NPO, SimNPO
from lightning_unlearn.modules.rmu import RMU
from lightning_unlearn.modules.soft_targets import CEU, UNDIAL
from lightning_unlearn.modules.step import ForwardOutput
from lightning_unlearn.modules.task_arithmetic import TAU, TaskArithmetic

__all__ = [
    "CEU",
    "NPO",
    "RMU",
    "TAU",
    "UNDIAL",
    "WGA",
    "ForwardOutput",
    "GradientAscent",
    "GradientDifference",
    "SatImp",
    "SelectiveGradientAscent",
    "SimNPO",
    "TaskArithmetic",
    "UnlearningModule",
    "check_causal_lm",
    "load_causal_lm",
]
