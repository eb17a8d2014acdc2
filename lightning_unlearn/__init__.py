"""lightning-unlearn: PyTorch Lightning plugins for unlearning memorized sequences from LLMs."""

from lightning_unlearn.data import UnlearningDataModule
from lightning_unlearn.modules import GradientAscent, GradientDifference, SelectiveGradientAscent, UnlearningModule

__all__ = [
    "GradientAscent",
    "GradientDifference",
    "SelectiveGradientAscent",
    "UnlearningDataModule",
    "UnlearningModule",
]
__version__ = "0.1.0"
