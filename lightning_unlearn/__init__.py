"""lightning-unlearn: PyTorch Lightning plugins for unlearning memorized sequences from LLMs."""

from lightning_unlearn.data import UnlearningDataModule

__all__ = ["UnlearningDataModule"]
__version__ = "0.1.0"
