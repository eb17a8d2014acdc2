"""RecoveryCheck: at the end of fit, whether the forgotten records stay forgotten under attack, logged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_unlearn.callbacks.monitor import has_split
from lightning_unlearn.evaluation.recovery import (
    RECOVERY_ATTACKS,
    check_recovery_attacks,
    recovery_scores,
    recovery_summary,
)
from lightning_unlearn.evaluation.scoring import score_memorization
from lightning_unlearn.functional.thresholds import holdout_threshold
from lightning_unlearn.integrations.huggingface import get_model
from lightning_unlearn.utilities.errors import ConfigurationError


class RecoveryCheck(Callback):
    """Runs the attacks of :mod:`lightning_unlearn.evaluation.recovery` on the unlearned model when training ends and
    logs ``recovery/{attack}_above`` (forget records above the threshold after the attack; sampling: (n,
    p)-discoverable) and ``recovery/{attack}_holdout_above`` (the same for the holdout, the control) to the Trainer's
    loggers.

    The threshold is the holdout's ``quantile`` of g under the model **before** unlearning (taken at train start, as
    the stop rule takes it); a resumed run keeps it. Every process runs the attacks on its own whole copy of the
    model (the same numbers), so none waits on another; a ZeRO-3-sharded model is refused with what to do.
    Relearning fine-tunes on the datamodule's relearn split, else its retain split. ``results`` holds the summary.

    Args:
        attacks: names from ``relearn``, ``int8``, ``int4``, ``sampling``.
        quantile: the threshold's holdout quantile.
        relearn_steps: Adam steps of the relearning attack.
        relearn_learning_rate: its learning rate.
    """

    def __init__(
        self,
        attacks: Sequence[str] = RECOVERY_ATTACKS,
        quantile: float = 0.95,
        relearn_steps: int = 20,
        relearn_learning_rate: float = 1e-4,
    ) -> None:
        self.attacks = check_recovery_attacks(attacks)
        self.quantile = quantile
        self.options = {"relearn_steps": relearn_steps, "relearn_learning_rate": relearn_learning_rate}
        self.threshold: float | None = None
        self.results: dict[str, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not has_split(trainer, "holdout"):
            raise ConfigurationError("RecoveryCheck needs an UnlearningDataModule with a holdout split (the control)")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.threshold is None:  # not restored from a checkpoint: the model before unlearning
            holdout = score_memorization(get_model(pl_module), trainer.datamodule.scoring_dataloader("holdout"))
            self.threshold = holdout_threshold(torch.tensor(list(holdout.values())), "quantile", self.quantile)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        attacked = recovery_scores(get_model(pl_module), trainer.datamodule, self.attacks, **self.options)
        self.results = recovery_summary(attacked, self.threshold)
        counts = {f"recovery/{k}": float(v) for k, v in self.results.items() if k.endswith("_above")}
        for logger in trainer.loggers:
            logger.log_metrics(counts, step=trainer.global_step)
        rank_zero_info(
            f"RecoveryCheck (threshold {self.threshold:.4f}): "
            + ", ".join(
                f"{a} {self.results[f'{a}_above']} above (holdout {self.results[f'{a}_holdout_above']})"
                for a in self.attacks
            )
        )

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "results": self.results}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.threshold = state_dict.get("threshold", state_dict.get("level"))  # "level" before 0.2
        self.results = dict(state_dict["results"])
