"""lightning-unlearn: PyTorch Lightning plugins for unlearning memorized sequences from LLMs."""

from lightning_unlearn.data import UnlearningDataModule
from lightning_unlearn.modules import (
    TAU,
    GradientAscent,
    GradientDifference,
    SelectiveGradientAscent,
    TaskArithmetic,
    UnlearningModule,
)

__all__ = [
    "TAU",
    "GradientAscent",
    "GradientDifference",
    "SelectiveGradientAscent",
    "TaskArithmetic",
    "UnlearningDataModule",
    "UnlearningModule",
]
__version__ = "0.1.0"
