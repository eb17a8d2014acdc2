"""SelectiveAscent: the paper's SGA rule, per-sample forget weights from each sample's current memorization."""

from __future__ import annotations

from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_unlearn.callbacks.monitor import find_monitor


def selective_weights(
    g: Tensor, gamma: float = 0.7, keep_top: int = 1, mode: str = "select", forgotten_at: float | None = None
) -> Tensor:
    """Per-sample forget weights (``Tensor[B]``, in [0, 1]) of one step's batch from its g (``Tensor[B]``).

    ``"select"`` (the paper): 1 where g >= gamma, else 0. ``"proportional"`` (beyond the paper):
    (g - gamma) / (1 - gamma) where g >= gamma, else 0, so the more memorized a sample, the harder it is pushed.
    Either way the ``keep_top`` most memorized samples get weight 1, so a step is never empty. With
    ``forgotten_at`` (beyond the paper), samples at or below it get weight 0 even among the ``keep_top``: what is
    already forgotten is not pushed further below unseen data.

    Example:
        >>> selective_weights(torch.tensor([0.9, 0.5, 0.75, 0.6]), gamma=0.7)
        tensor([1., 0., 1., 0.])
        >>> selective_weights(torch.tensor([0.3, 0.5]), gamma=0.7, keep_top=1)
        tensor([0., 1.])
        >>> selective_weights(torch.tensor([0.3, 0.5]), gamma=0.7, keep_top=1, forgotten_at=0.5)
        tensor([0., 0.])
    """
    if mode == "select":
        weights = (g >= gamma).float()
    elif mode == "proportional":
        weights = ((g - gamma) / (1 - gamma)).clamp(0, 1)
    else:
        raise ValueError(f"mode must be 'select' or 'proportional', got {mode!r}")
    if keep_top > 0:
        weights[g.topk(min(keep_top, len(g))).indices] = 1.0
    if forgotten_at is not None:
        weights[g <= forgotten_at] = 0.0
    return weights


class SelectiveAscent(Callback):
    """Sets the module's ``forget_weights`` before every step from the latest g (Selective Gradient Ascent).

    The rule (:func:`selective_weights`) is applied to the step's whole batch across processes, so ``keep_top``
    is global. Needs a :class:`~lightning_unlearn.callbacks.MemorizationMonitor` and a module with per-sample
    ``forget_weights`` (every :class:`~lightning_unlearn.UnlearningModule`).

    Args:
        gamma: memorization level, a fraction in [0, 1], at or above which a sample is still ascended.
        keep_top: how many of the most memorized samples of each step are always kept.
        mode: ``"select"`` (weights 0/1, the paper) or ``"proportional"``.
        skip_forgotten: weight 0 for samples at or below the forgetting threshold (the monitor's, set by
            :class:`~lightning_unlearn.callbacks.MemorizationEarlyStopping`), even as the batch's most memorized.
    """

    def __init__(
        self,
        gamma: float = 0.7,
        keep_top: int = 1,
        mode: Literal["select", "proportional"] = "select",
        skip_forgotten: bool = False,
    ) -> None:
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {gamma}")
        if mode not in ("select", "proportional"):
            raise ValueError(f"mode must be 'select' or 'proportional', got {mode!r}")
        self.gamma = gamma
        self.keep_top = keep_top
        self.mode = mode
        self.skip_forgotten = skip_forgotten

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        find_monitor(trainer)
        if not hasattr(pl_module, "set_forget_weights"):
            raise TypeError(
                f"SelectiveAscent needs a module with per-sample forget weights (an UnlearningModule), "
                f"not {type(pl_module).__name__}"
            )

    def apply(self, trainer: L.Trainer, pl_module: L.LightningModule, batch_ids: Tensor) -> None:
        """Sets the weights of the step's samples (``batch_ids``: every process's, ``Tensor[B]``)."""
        monitor = find_monitor(trainer)
        forgotten_at = monitor.threshold if self.skip_forgotten else None
        weights = selective_weights(monitor.values[batch_ids.cpu()], self.gamma, self.keep_top, self.mode, forgotten_at)
        pl_module.set_forget_weights(batch_ids, weights)
