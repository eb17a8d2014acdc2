"""MemorizationEarlyStopping: stop unlearning once the forget set's memorization is at or below a threshold."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_unlearn.callbacks.monitor import MemorizationMonitor, get_model
from lightning_unlearn.distributed import score_on_all_ranks


def find_monitor(trainer: L.Trainer, split: str = "forget") -> MemorizationMonitor:
    """The trainer's MemorizationMonitor of ``split``; a clear error when there is none."""
    for callback in trainer.callbacks:
        if isinstance(callback, MemorizationMonitor) and callback.split == split:
            return callback
    raise ValueError(f"no MemorizationMonitor watches the {split} split: add `MemorizationMonitor()` to the callbacks")


class MemorizationEarlyStopping(Callback):
    """Stops training when the forget set's memorization g is at or below a threshold.

    ``criterion="max"`` (our default, the per-sample rule): **every** forget sample at or below the threshold.
    ``criterion="mean"`` (Jang et al.'s and the paper's rule): the mean g at or below it, which can leave some
    samples far above. ``threshold="holdout"`` is the mean g of the model *before unlearning* on the holdout split
    (unseen data of the same distribution), computed once when training starts and logged as ``holdout/ma_mean``;
    a float is taken as is. Decisions use the :class:`MemorizationMonitor`'s scores, only when every score is
    fresh (belongs to the current weights; with its ``refresh="above_threshold"`` policy, the older scores are
    re-scored first), and are the same on every process. When the training forward keeps
    the scores fresh, the rule is checked before each optimizer step, so no step is taken past it; Lightning
    still counts that last (untaken) step in ``trainer.global_step``, while ``stopped_step`` is the number of
    optimizer steps actually taken.

    Args:
        criterion: ``"max"`` or ``"mean"`` of g over the forget set.
        threshold: ``"holdout"`` or a fraction in [0, 1].
        verbose: log a line when stopping.
    """

    def __init__(
        self, criterion: Literal["max", "mean"] = "max", threshold: str | float = "holdout", verbose: bool = True
    ) -> None:
        if criterion not in ("max", "mean"):
            raise ValueError(f"criterion must be 'max' or 'mean', got {criterion!r}")
        if isinstance(threshold, str) and threshold != "holdout":
            raise ValueError(f"threshold must be 'holdout' or a float, got {threshold!r}")
        self.criterion = criterion
        self.threshold = threshold
        self.verbose = verbose
        self.threshold_value: float | None = None if threshold == "holdout" else float(threshold)
        self.stopped_step: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(criterion=self.criterion, threshold=self.threshold)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        find_monitor(trainer)
        if self.threshold == "holdout":
            datamodule = trainer.datamodule
            if datamodule is None or not getattr(datamodule, "has_split", lambda _: False)("holdout"):
                raise ValueError(
                    "threshold='holdout' needs an UnlearningDataModule with a holdout split (unseen data); "
                    "give one, or pass a float threshold"
                )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.threshold_value is None:  # not restored from a checkpoint: measure it before unlearning
            _, holdout = score_on_all_ranks(
                get_model(pl_module), trainer.datamodule.scoring_dataloader("holdout"), trainer.strategy
            )
            self.threshold_value = holdout.mean().item()
        find_monitor(trainer).threshold = self.threshold_value
        if self.threshold == "holdout":
            pl_module.log("holdout/ma_mean", self.threshold_value, on_step=False, on_epoch=True, batch_size=1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        find_monitor(trainer).refresh_if_due(trainer, pl_module)
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> bool:
        """Whether the rule holds for the current weights; if so, asks the trainer to stop."""
        if trainer.should_stop and self.stopped_step is not None:  # decided already (before a skipped step)
            return True
        monitor = find_monitor(trainer)
        if self.threshold_value is None or not monitor.is_current(trainer.global_step):
            return False
        holds, value = self.holds(trainer)
        if holds and not monitor.is_fresh(trainer.global_step):  # verify the samples assumed still forgotten
            monitor.refresh_stale(trainer, trainer.lightning_module)
            holds, value = self.holds(trainer)
        if holds:
            trainer.should_stop = True
            self.stopped_step = trainer.global_step
            if self.verbose:
                rank_zero_info(
                    f"MemorizationEarlyStopping: {self.criterion} forget g {value:.4f} <= threshold "
                    f"{self.threshold_value:.4f} after {trainer.global_step} steps"
                )
        return holds

    def holds(self, trainer: L.Trainer) -> tuple[bool, float]:
        """Whether the rule holds for the monitor's latest scores (the same answer on every process), and the
        max or mean g it compared."""
        monitor = find_monitor(trainer)
        g = monitor.values[~monitor.values.isnan()]
        value = (g.max() if self.criterion == "max" else g.mean()).item()
        return trainer.strategy.reduce_boolean_decision(value <= self.threshold_value, all=True), value

    def state_dict(self) -> dict[str, Any]:
        return {"threshold_value": self.threshold_value, "stopped_step": self.stopped_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.threshold_value = state_dict["threshold_value"]
        self.stopped_step = state_dict["stopped_step"]
