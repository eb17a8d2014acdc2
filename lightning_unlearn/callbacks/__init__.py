"""Callbacks that score every forget sample during training, reweight gradient ascent, and stop it."""

from lightning_unlearn.callbacks.attacks import AttackMonitor
from lightning_unlearn.callbacks.control import per_sample_control
from lightning_unlearn.callbacks.monitor import MemorizationMonitor
from lightning_unlearn.callbacks.progress import UnlearningProgress
from lightning_unlearn.callbacks.robustness import RobustnessCheck
from lightning_unlearn.callbacks.selective import SelectiveAscent, selective_weights
from lightning_unlearn.callbacks.stopping import MemorizationEarlyStopping
from lightning_unlearn.callbacks.utility import UtilityEvaluation

__all__ = [
    "AttackMonitor",
    "MemorizationEarlyStopping",
    "MemorizationMonitor",
    "RobustnessCheck",
    "SelectiveAscent",
    "UnlearningProgress",
    "UtilityEvaluation",
    "per_sample_control",
    "selective_weights",
]
