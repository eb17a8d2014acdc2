"""Per-sample control for any method in one line: monitor, selective ascent and the per-sample stop rule."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.callbacks import Callback

from lightning_unlearn.callbacks.monitor import MemorizationMonitor
from lightning_unlearn.callbacks.selective import SelectiveAscent
from lightning_unlearn.callbacks.stopping import MemorizationEarlyStopping


def per_sample_control(
    gamma: float = 0.7,
    keep_top: int = 1,
    mode: Literal["select", "proportional"] = "select",
    skip_forgotten: bool = False,
    criterion: Literal["max", "mean"] = "max",
    threshold: str | float = "holdout_quantile",
    quantile: float = 0.95,
    select: bool = True,
    watch_retain: bool = False,
    refresh: Literal["auto", "all", "above_threshold"] = "auto",
    every_n_train_steps: int = 1,
) -> list[Callback]:
    """The callbacks that make any :class:`~lightning_unlearn.UnlearningModule` selective and per-sample stopped:
    ``L.Trainer(callbacks=per_sample_control())`` with ``NPO``, ``SimNPO``, a retain term, or a method of your own.

    Args:
        gamma, keep_top, mode, skip_forgotten: the selection (:class:`SelectiveAscent`).
        criterion, threshold, quantile: the stop rule (:class:`MemorizationEarlyStopping`); by default every
            forget sample at or below the holdout's 0.95 quantile of g.
        select: add the selection (``False``: only the monitor and the stop rule).
        watch_retain: also monitor the retain split (``retain/g_mean``, ``retain/collateral``, per sample).
        refresh, every_n_train_steps: the forget monitor's scoring policy (:class:`MemorizationMonitor`).
    """
    callbacks: list[Callback] = [MemorizationMonitor(every_n_train_steps=every_n_train_steps, refresh=refresh)]
    if select:
        callbacks.append(SelectiveAscent(gamma=gamma, keep_top=keep_top, mode=mode, skip_forgotten=skip_forgotten))
    callbacks.append(MemorizationEarlyStopping(criterion=criterion, threshold=threshold, quantile=quantile))
    if watch_retain:
        callbacks.append(MemorizationMonitor(split="retain", every_n_train_steps=every_n_train_steps))
    return callbacks
