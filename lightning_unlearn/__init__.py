"""lightning-unlearn: PyTorch Lightning plugins for unlearning memorized sequences from LLMs."""

__version__ = "0.1.0"  # before the imports: lightning_unlearn.unlearning records it

from lightning_unlearn.data import UnlearningDataModule
from lightning_unlearn.modules import (
    CEU,
    NPO,
    RMU,
    TAU,
    UNDIAL,
    WGA,
    GradientAscent,
    GradientDifference,
    SatImp,
    SelectiveGradientAscent,
    SimNPO,
    TaskArithmetic,
    UnlearningModule,
)
from lightning_unlearn.unlearning import UnlearningResult, unlearn

__all__ = [
    "CEU",
    "NPO",
    "RMU",
    "TAU",
    "UNDIAL",
    "WGA",
    "GradientAscent",
    "GradientDifference",
    "SatImp",
    "SelectiveGradientAscent",
    "SimNPO",
    "TaskArithmetic",
    "UnlearningDataModule",
    "UnlearningModule",
    "UnlearningResult",
    "unlearn",
]
