"""lightning-unlearn: PyTorch Lightning plugins for unlearning memorized sequences from LLMs."""

from lightning_unlearn.data import UnlearningDataModule
from lightning_unlearn.modules import (
    NPO,
    TAU,
    GradientAscent,
    GradientDifference,
    SelectiveGradientAscent,
    SimNPO,
    TaskArithmetic,
    UnlearningModule,
)

__all__ = [
    "NPO",
    "TAU",
    "GradientAscent",
    "GradientDifference",
    "SelectiveGradientAscent",
    "SimNPO",
    "TaskArithmetic",
    "UnlearningDataModule",
    "UnlearningModule",
]
__version__ = "0.1.0"
