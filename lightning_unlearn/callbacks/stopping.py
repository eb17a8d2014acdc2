"""MemorizationEarlyStopping: stop unlearning once the forget set's memorization is at or below a threshold."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_unlearn.callbacks.monitor import find_monitor, has_split
from lightning_unlearn.callbacks.protocols import ScoresInTrainingStep
from lightning_unlearn.evaluation.scoring import score_on_all_ranks
from lightning_unlearn.functional.thresholds import (
    HOLDOUT_THRESHOLDS,
    bootstrap_interval,
    check_threshold,
    holdout_threshold,
)
from lightning_unlearn.integrations.huggingface import get_model
from lightning_unlearn.utilities.errors import ConfigurationError


class MemorizationEarlyStopping(Callback):
    """Stops training when the forget set's memorization g is at or below a threshold.

    ``criterion="max"`` (our default, the per-sample rule): **every** forget sample at or below the threshold.
    ``criterion="mean"`` (Jang et al.'s and the paper's rule): the mean g at or below it, which can leave some
    samples far above. The threshold comes from the g of the model *before unlearning* on the holdout split
    (unseen data of the same distribution), measured once when training starts: ``"holdout_quantile"`` (the
    default) is its ``quantile`` (0.95: a record is forgotten when it is no more memorized than 95% of unseen
    records; the threshold of the per-sample rule, as the mean of unseen data has about half of them above it),
    ``"holdout_mean"`` its mean (the paper's threshold, for the mean rule). A float is taken as is. The threshold is
    logged as ``holdout/threshold`` with a 95% bootstrap interval (``holdout/threshold_low``,
    ``holdout/threshold_high``: how much it would move with another holdout of the same size), and the holdout's
    ``floor_quantile`` as ``holdout/floor``: the monitor counts forget records below it as over-forgotten; the holdout's
    mean g is logged as ``holdout/g_mean``. When training ends without the rule holding (``max_steps`` reached first),
    ``rule_met`` is False and a warning says how far it was.

    Decisions use the :class:`MemorizationMonitor`'s scores, only when every score is fresh (belongs to the current
    weights; with its ``refresh="above_threshold"`` policy, the older scores are re-scored first), and are the same
    on every process. They are taken after every step, and before the first. With a module that scores in its
    training step (:class:`~lightning_unlearn.callbacks.ScoresInTrainingStep`), the rule is checked inside each
    step, before its optimizer step, so no step is taken past it; Lightning still counts that last (untaken) step in
    ``trainer.global_step``, while ``stopped_step`` is the number of optimizer steps actually taken.

    Args:
        criterion: ``"max"`` or ``"mean"`` of g over the forget set.
        threshold: ``"holdout_quantile"``, ``"holdout_mean"`` or a fraction in [0, 1] (``"holdout"``, the old
            name of ``"holdout_mean"``, still works with a warning).
        quantile: the holdout quantile of ``threshold="holdout_quantile"``, in (0, 1).
        floor_quantile: the holdout quantile below which a forget record counts as over-forgotten, in (0, 1).
        verbose: log a line when stopping.
    """

    def __init__(
        self,
        criterion: Literal["max", "mean"] = "max",
        threshold: str | float = "holdout_quantile",
        quantile: float = 0.95,
        floor_quantile: float = 0.05,
        verbose: bool = True,
    ) -> None:
        if criterion not in ("max", "mean"):
            raise ConfigurationError(f"criterion must be 'max' or 'mean', got {criterion!r}")
        threshold = check_threshold(threshold, type(self).__name__)
        if not 0.0 < floor_quantile < quantile < 1.0:
            raise ConfigurationError(f"need 0 < floor_quantile < quantile < 1, got {floor_quantile} and {quantile}")
        self.criterion = criterion
        self.threshold = threshold
        self.quantile = quantile
        self.floor_quantile = floor_quantile
        self.verbose = verbose
        self.threshold_value: float | None = None if threshold in HOLDOUT_THRESHOLDS else float(threshold)
        self.floor: float | None = None  # the holdout's floor_quantile, when there is a holdout
        self.interval: tuple[float, float] | None = None  # bootstrap interval of a holdout threshold
        self.holdout_size: int | None = None  # holdout records measured (None: not measured yet)
        self.holdout_mean: float | None = None  # the holdout's mean g, logged as holdout/g_mean
        self.stopped_step: int | None = None
        self.rule_met: bool | None = None  # set when training ends: whether the rule held for the final weights

    @property
    def state_key(self) -> str:
        return self._generate_state_key(criterion=self.criterion, threshold=self.threshold, quantile=self.quantile)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        find_monitor(trainer)
        if self.threshold in HOLDOUT_THRESHOLDS and not has_split(trainer, "holdout"):
            raise ConfigurationError(
                f"threshold={self.threshold!r} needs an UnlearningDataModule with a holdout split (unseen data); "
                "give one, or pass a float threshold"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.holdout_size is None and has_split(trainer, "holdout"):  # not restored: measure it before unlearning
            _, holdout = score_on_all_ranks(
                get_model(pl_module), trainer.datamodule.scoring_dataloader("holdout"), trainer.strategy
            )
            self._set_levels(holdout)
        monitor = find_monitor(trainer)
        monitor.threshold, monitor.floor = self.threshold_value, self.floor
        if self.stopped_step is not None and self.stopped_step <= trainer.global_step:
            trainer.should_stop = True  # resumed from a run that had met the rule: nothing more to train
        elif not isinstance(pl_module, ScoresInTrainingStep):
            self.check(trainer)  # met before the first step: none is taken (others check in their training step)
        logged = {"holdout/threshold": self.threshold_value}
        if self.interval is not None:
            logged |= {"holdout/threshold_low": self.interval[0], "holdout/threshold_high": self.interval[1]}
        if self.floor is not None:
            logged["holdout/floor"] = self.floor
        if self.holdout_mean is not None:
            logged["holdout/g_mean"] = self.holdout_mean
        pl_module.log_dict(logged, on_step=False, on_epoch=True, batch_size=1)
        if self.verbose and self.interval is not None:
            low, high = self.interval
            rank_zero_info(
                f"MemorizationEarlyStopping: threshold {self.threshold_value:.4f} ({self._level_name()} of "
                f"{self.holdout_size} holdout records; 95% bootstrap interval {low:.4f}–{high:.4f})"
            )

    def _level_name(self) -> str:
        return "mean g" if self.threshold == "holdout_mean" else f"{self.quantile:g} quantile of g"

    def _set_levels(self, holdout_g: torch.Tensor) -> None:
        """The threshold (for a holdout threshold), its bootstrap interval and the floor from the holdout's g."""
        self.holdout_size = len(holdout_g)
        self.holdout_mean = holdout_g.mean().item()
        self.floor = holdout_threshold(holdout_g, "quantile", self.floor_quantile)
        if self.threshold in HOLDOUT_THRESHOLDS:
            kind = HOLDOUT_THRESHOLDS[self.threshold]
            self.threshold_value = holdout_threshold(holdout_g, kind, self.quantile)
            self.interval = bootstrap_interval(holdout_g, kind, self.quantile)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        find_monitor(trainer).refresh_if_due(trainer, pl_module)
        self.check(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Whether the rule held when training ended (``rule_met``); a warning when it did not (``max_steps`` or
        ``max_epochs`` ran out first), with the step, the records above the threshold and the max g."""
        if self.threshold_value is None:
            return
        monitor = find_monitor(trainer)
        monitor.refresh_stale(trainer, pl_module)  # the scores of the final weights (nothing when already fresh)
        self.rule_met, value = self.holds(trainer)
        if self.rule_met and self.stopped_step is None:
            self.stopped_step = trainer.global_step
        if not self.rule_met:
            g = monitor.values[~monitor.values.isnan()]
            rank_zero_warn(
                f"MemorizationEarlyStopping: training ended after {trainer.global_step} steps without meeting the "
                f"rule: {int((g > self.threshold_value).sum())} of {len(g)} forget records above the threshold "
                f"{self.threshold_value:.4f}, {self.criterion} g {value:.4f}. Train longer (max_steps/max_epochs) or "
                "with a larger learning rate."
            )

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
        return {
            "threshold_value": self.threshold_value,
            "floor": self.floor,
            "interval": self.interval,
            "holdout_size": self.holdout_size,
            "holdout_mean": self.holdout_mean,
            "stopped_step": self.stopped_step,
            "rule_met": self.rule_met,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.threshold_value = state_dict["threshold_value"]
        self.floor = state_dict.get("floor")
        self.interval = state_dict.get("interval")
        self.holdout_size = state_dict.get("holdout_size", 0)  # 0: measured before, size unknown
        self.holdout_mean = state_dict.get("holdout_mean")
        self.stopped_step = state_dict["stopped_step"]
        self.rule_met = state_dict.get("rule_met")
