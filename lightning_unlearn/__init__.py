"""lightning-unlearn: PyTorch Lightning plugins for unlearning memorized sequences from LLMs."""

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
from lightning_unlearn.utilities.version import __version__

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
    "__version__",
    "unlearn",
]
