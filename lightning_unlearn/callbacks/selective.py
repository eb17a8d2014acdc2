"""SelectiveAscent: the paper's SGA rule, per-sample forget weights from each sample's current memorization."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_unlearn.callbacks.monitor import MemorizationMonitor, find_monitor
from lightning_unlearn.callbacks.protocols import ScoresInTrainingStep
from lightning_unlearn.distributed.gather import gather_ids
from lightning_unlearn.utilities.errors import ConfigurationError


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
        raise ConfigurationError(f"mode must be 'select' or 'proportional', got {mode!r}")
    if keep_top > 0:
        weights[g.topk(min(keep_top, len(g))).indices] = 1.0
    if forgotten_at is not None:
        weights[g <= forgotten_at] = 0.0
    return weights


class SelectiveAscent(Callback):
    """Selective Gradient Ascent's per-sample weights for every step, from each forget record's latest g.

    For any LightningModule: before each training step it puts the step's weights in ``batch["forget"]["weight"]``
    (``Tensor[B]``, float32, on the batch's device), from the monitor's scores at the current weights (the step's
    records not scored at them yet are scored first); a module that multiplies its per-sample forget loss by them
    does SGA. A module that scores its forget batch in its own training forward
    (:class:`~lightning_unlearn.callbacks.ScoresInTrainingStep`, every :class:`~lightning_unlearn.UnlearningModule`)
    gets them through :func:`~lightning_unlearn.callbacks.hand_off_scores` instead, from those very scores.

    The rule (:func:`selective_weights`) is applied to the step's records of every process, so ``keep_top`` is
    global; under gradient accumulation with the datamodule's loader, to every micro-batch of the optimizer step.
    Needs a :class:`~lightning_unlearn.callbacks.MemorizationMonitor` of the forget split.

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
            raise ConfigurationError(f"gamma must be in [0, 1), got {gamma}")
        if mode not in ("select", "proportional"):
            raise ConfigurationError(f"mode must be 'select' or 'proportional', got {mode!r}")
        self.gamma = gamma
        self.keep_top = keep_top
        self.mode = mode
        self.skip_forgotten = skip_forgotten

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        find_monitor(trainer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(pl_module, ScoresInTrainingStep):
            return  # its training forward hands its scores over, and the weights go with them (hand_off_scores)
        forget = forget_batch(batch)
        own = forget["sample_id"]
        window = forget.get("window_ids") if trainer.accumulate_grad_batches > 1 else None
        local = own if window is None else window
        step_ids = gather_ids(trainer.strategy, local).cpu()
        monitor = find_monitor(trainer)
        monitor.refresh_stale(trainer, pl_module, sample_ids=step_ids)  # the same ids on every process
        by_id = torch.zeros(int(step_ids.max()) + 1, dtype=torch.float32)
        by_id[step_ids] = self.weights(monitor, step_ids)
        forget["weight"] = by_id[own.cpu()].to(own.device)

    def weights(self, monitor: MemorizationMonitor, batch_ids: Tensor) -> Tensor:
        """The weights (``Tensor[B]``) of the step's records ``batch_ids`` (every process's) from their latest g."""
        forgotten_at = monitor.threshold if self.skip_forgotten else None
        return selective_weights(monitor.values[batch_ids.cpu()], self.gamma, self.keep_top, self.mode, forgotten_at)

    def apply(self, trainer: L.Trainer, pl_module: ScoresInTrainingStep, batch_ids: Tensor) -> None:
        """Sets the weights of the step's records (``batch_ids``: every process's, ``Tensor[B]``) on a module that
        scores in its training step."""
        pl_module.set_forget_weights(batch_ids, self.weights(find_monitor(trainer), batch_ids))


def forget_batch(batch: Any) -> dict[str, Tensor]:
    """The forget records of a training batch: ``batch["forget"]`` (as the UnlearningDataModule makes them), or the
    batch itself when it is one split's records (a dict with ``sample_id``)."""
    if isinstance(batch, dict) and isinstance(batch.get("forget"), dict):
        return batch["forget"]
    if isinstance(batch, dict) and "sample_id" in batch:
        return batch
    raise ConfigurationError(
        "SelectiveAscent needs training batches that carry each forget record's sample_id: a dict with a 'forget' "
        "batch (as UnlearningDataModule makes them) or with 'sample_id'"
    )
