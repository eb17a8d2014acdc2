"""Callbacks for any Trainer whose LightningModule exposes a Hugging Face causal LM: score every forget record during
training (:class:`MemorizationMonitor`), select what gradient ascent still pushes on (:class:`SelectiveAscent`), stop
by the per-sample rule (:class:`MemorizationEarlyStopping`), and watch membership attacks, recovery attacks and
utility as it goes."""

from lightning_unlearn.callbacks.control import hand_off_scores, per_sample_control
from lightning_unlearn.callbacks.membership import MembershipMonitor
from lightning_unlearn.callbacks.monitor import MemorizationMonitor
from lightning_unlearn.callbacks.progress import UnlearningProgress
from lightning_unlearn.callbacks.protocols import ScoresInTrainingStep
from lightning_unlearn.callbacks.recovery import RecoveryCheck
from lightning_unlearn.callbacks.selective import SelectiveAscent, selective_weights
from lightning_unlearn.callbacks.stopping import MemorizationEarlyStopping
from lightning_unlearn.callbacks.utility import UtilityEvaluation

__all__ = [
    "MembershipMonitor",
    "MemorizationEarlyStopping",
    "MemorizationMonitor",
    "RecoveryCheck",
    "ScoresInTrainingStep",
    "SelectiveAscent",
    "UnlearningProgress",
    "UtilityEvaluation",
    "hand_off_scores",
    "per_sample_control",
    "selective_weights",
]
