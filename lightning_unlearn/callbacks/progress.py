"""UnlearningProgress: one progress bar over the optimizer steps that says how far unlearning is."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only


class UnlearningProgress(Callback):
    """A tqdm bar of optimizer steps (out of ``max_steps``) with the forget set's max g, the records still above the
    threshold and the threshold, as the forget :class:`~lightning_unlearn.callbacks.MemorizationMonitor` logs them.
    Shown on global rank 0 only; give the Trainer ``enable_progress_bar=False`` so that Lightning's bar does not
    print beside it.

    Args:
        desc: the bar's label.
        enabled: ``False`` shows nothing (the callback then costs nothing).
        total: the bar's length in steps (default: the Trainer's ``max_steps``).
    """

    def __init__(self, desc: str = "unlearning", enabled: bool = True, total: int | None = None) -> None:
        self.desc, self.enabled, self.total = desc, enabled, total
        self.bar: Any = None

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from tqdm.auto import tqdm

        total = self.total or (trainer.max_steps if trainer.max_steps > 0 else None)
        self.bar = tqdm(total=total, desc=self.desc, unit="step", disable=not self.enabled, leave=True)

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        metrics = trainer.callback_metrics
        self.bar.n = trainer.global_step
        shown = {"max_g": "forget/g_max", "above": "forget/above_threshold", "threshold": "forget/threshold"}
        postfix = {name: f"{float(metrics[key]):.3g}" for name, key in shown.items() if key in metrics}
        self.bar.set_postfix(postfix, refresh=True)

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bar.close()
