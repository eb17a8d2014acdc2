"""Per-sample control for any method in one line (monitor, selective ascent and the per-sample stop rule), and the
hand-off through which a module's training forward gives them its scores."""

from __future__ import annotations

from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_unlearn.callbacks.monitor import MemorizationMonitor
from lightning_unlearn.callbacks.selective import SelectiveAscent
from lightning_unlearn.callbacks.stopping import MemorizationEarlyStopping
from lightning_unlearn.distributed.gather import gather_ids


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


def hand_off_scores(
    trainer: L.Trainer, pl_module: L.LightningModule, sample_id: Tensor, g: Tensor, window_ids: Tensor | None = None
) -> bool:
    """The one call of a module that scores in its training step
    (:class:`~lightning_unlearn.callbacks.ScoresInTrainingStep`): after its training forward, before it takes its
    loss. The forget monitors take the batch's g, the stop rule is checked, and the selection sets the weights of
    the step's records (``set_forget_weights``), all from those scores: no scoring pass for the batch.

    Args:
        trainer: the Trainer (its callbacks are the ones that take the scores).
        pl_module: the module; its ``set_forget_weights`` receives the selection's weights.
        sample_id: this process's forget records in the batch, ``Tensor[B]``.
        g: their memorization at the current weights, ``Tensor[B]``, fractions in [0, 1].
        window_ids: under gradient accumulation, every record of the optimizer step on this process (the
            datamodule's loader gives them): those not scored at the current weights yet are scored now, and the
            selection spans all of them, as in one big batch.

    Returns:
        Whether the stop rule holds for the current weights: the module then takes no optimizer step.
    """
    callbacks = trainer.callbacks
    for monitor in (cb for cb in callbacks if isinstance(cb, MemorizationMonitor) and cb.split == "forget"):
        batch_ids = monitor.record(trainer, pl_module, sample_id, g)  # every process's ids
        if window_ids is not None:
            batch_ids = gather_ids(trainer.strategy, window_ids)
            monitor.refresh_stale(trainer, pl_module, sample_ids=batch_ids.cpu())
        if any(cb.check(trainer) for cb in callbacks if isinstance(cb, MemorizationEarlyStopping)):
            return True
        for selective in (cb for cb in callbacks if isinstance(cb, SelectiveAscent)):
            selective.apply(trainer, pl_module, batch_ids)
    return False


def brought_monitors(pl_module: L.LightningModule) -> list[Callback]:
    """The monitors a module brings through ``configure_callbacks`` (SGA, TA, TAU): a forget-set monitor with the
    module's policy (its ``every_n_train_steps`` and ``refresh`` hyperparameters), and the Trainer's monitors of other
    splits (e.g. retain), handed back because Lightning drops every Trainer callback of a type that the module
    brings."""
    given = pl_module.trainer.callbacks if pl_module._trainer is not None else []
    others = [cb for cb in given if isinstance(cb, MemorizationMonitor) and cb.split != "forget"]
    policy = {key: pl_module.hparams[key] for key in ("every_n_train_steps", "refresh") if key in pl_module.hparams}
    return [MemorizationMonitor(**policy), *others]


def users_or_own(pl_module: L.LightningModule, own: Callback) -> Callback:
    """The Trainer's callback of ``own``'s type when the user gave one (the user's configuration wins, and the log
    says so), else ``own``: what ``configure_callbacks`` returns replaces the Trainer's callbacks of the same type."""
    callbacks = pl_module.trainer.callbacks if pl_module._trainer is not None else []
    given = [cb for cb in callbacks if type(cb) is type(own)]
    if not given:
        return own
    rank_zero_info(f"{type(pl_module).__name__}: using the {type(own).__name__} given to the Trainer, not its own")
    return given[0]
