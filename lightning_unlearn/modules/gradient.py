"""Gradient-based unlearning: gradient ascent (Jang et al.), gradient difference, and selective gradient ascent."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_unlearn.callbacks import MemorizationEarlyStopping, SelectiveAscent
from lightning_unlearn.modules.base import UnlearningModule


class GradientAscent(UnlearningModule):
    """GA (Jang et al. 2022): ascend the forget samples' NLL. Add ``MemorizationMonitor()`` and
    ``MemorizationEarlyStopping(criterion="mean")`` to a Trainer for Jang's stop rule."""

    def forget_loss(self, batch: dict[str, Tensor], logits: Tensor, nll: Tensor) -> Tensor:
        return -nll


class GradientDifference(UnlearningModule):
    """Ascend the forget NLL while descending the retain NLL: loss = −NLL(forget) + alpha · NLL(retain).

    Args:
        alpha: weight of the retain term.
        **kwargs: :class:`UnlearningModule` arguments.
    """

    needs_retain = True

    def __init__(self, model: Any, alpha: float = 1.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.alpha = alpha

    def forget_loss(self, batch: dict[str, Tensor], logits: Tensor, nll: Tensor) -> Tensor:
        return -nll

    def retain_loss(self, batch: dict[str, Tensor], logits: Tensor, nll: Tensor) -> Tensor:
        return self.alpha * nll


class SelectiveGradientAscent(GradientAscent):
    """SGA (Barbulescu & Triantafillou 2024): ascend only the samples still memorized at or above ``gamma``.

    Every forget sample is re-scored after every optimizer step; before each step, a sample's weight is 1 if its
    g >= gamma, else 0, and the ``keep_top`` most memorized of the batch are always kept. Training stops when the
    ``stop`` rule holds: ``"max"`` (default) every forget sample at or below ``threshold``, ``"mean"`` their mean.
    Brings its callbacks (monitor, selective ascent, early stopping) through ``configure_callbacks``.

    Args:
        gamma: memorization level at or above which a sample is ascended, a fraction in [0, 1).
        keep_top: samples always kept per step.
        threshold: ``"holdout"`` (mean g of unseen data before unlearning) or a fraction in [0, 1].
        stop: ``"max"`` or ``"mean"``.
        mode: ``"select"`` (0/1 weights, the paper) or ``"proportional"``.
        **kwargs: :class:`UnlearningModule` arguments.
    """

    def __init__(
        self,
        model: Any,
        gamma: float = 0.7,
        keep_top: int = 1,
        threshold: str | float = "holdout",
        stop: Literal["max", "mean"] = "max",
        mode: Literal["select", "proportional"] = "select",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.selective = SelectiveAscent(gamma=gamma, keep_top=keep_top, mode=mode)
        self.stopping = MemorizationEarlyStopping(criterion=stop, threshold=threshold)

    def configure_callbacks(self) -> list[Callback]:
        return [self.memorization_monitor(), self.selective, self.stopping]
