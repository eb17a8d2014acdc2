"""MemorizationMonitor: the current memorization g of every sample of a watched set, kept fresh during training."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_unlearn.distributed.gather import gather_scores
from lightning_unlearn.evaluation.scoring import score_on_all_ranks
from lightning_unlearn.functional.thresholds import BAND
from lightning_unlearn.integrations.huggingface import get_model
from lightning_unlearn.utilities.errors import ConfigurationError
from lightning_unlearn.utilities.files import write_text_atomically


def has_split(trainer: L.Trainer, name: str) -> bool:
    """Whether the trainer's datamodule is one with split ``name`` (an UnlearningDataModule that was given it)."""
    datamodule = trainer.datamodule
    return datamodule is not None and getattr(datamodule, "has_split", lambda _: False)(name)


#: What the progress bar shows while unlearning: the forget set's max g and the records still above the threshold.
PROGRESS_BAR_KEYS = ("forget/g_max", "forget/above_threshold")


class MemorizationMonitor(Callback):
    """Scores g(x) of every sample of a watched set before training and after every N optimizer steps.

    With no ``dataloader`` it watches the ``split`` of the :class:`~lightning_unlearn.UnlearningDataModule`.
    Scores come from two places: a scoring pass over the whole set (no grad, eval mode, every process scoring a
    share, results gathered), and, with our :class:`~lightning_unlearn.UnlearningModule`, the training forward
    itself, which gives the g of the batch's samples for free (score-in-the-loop). When every training step
    covers the whole set (the paper's setting), the training forward keeps every score fresh and no extra pass runs.
    A module with ``scoring_models()`` (relearning-aware unlearning: the model and its attacked copy) has each forget
    sample scored on each of them, its g the largest.

    Logs ``{split}/g_mean``, ``{split}/g_max``, ``{split}/outliers_above``, ``{split}/outliers_below``
    (the band of :class:`~lightning_unlearn.metrics.MemorizationOutliers`), ``{split}/collateral`` (samples whose
    g fell by more than ``collateral_drop`` since training started: for the retain split, what unlearning took
    that it should have kept) and, once :class:`MemorizationEarlyStopping` has measured the holdout,
    ``{split}/above_threshold`` and ``{split}/over_forgotten`` (below the holdout's floor quantile). The progress
    bar shows ``forget/g_max``, ``forget/above_threshold`` and ``forget/threshold``.
    Watch the retain split with ``MemorizationMonitor(split="retain")``: with a retain term, the training forward
    scores its batch for free. Works on any LightningModule with a ``model`` attribute or ``get_model()``.

    When the set is larger than a training batch, the samples outside the batch are re-scored by scoring passes
    (no grad, eval mode, length-sorted batches of the datamodule's ``eval_batch_size``) every
    ``every_n_train_steps`` steps. ``refresh="above_threshold"`` re-scores only the samples still above the
    forgetting threshold, as forgotten samples rarely come back; before the stop rule is allowed to hold,
    :meth:`refresh_stale` re-scores every sample assumed forgotten, so the rule is exact at the stop (the same run,
    step for step, as ``"all"``: tested). That is the default (``"auto"``) when the monitor watches a datamodule's
    split, so a step's scoring work follows the records still above the threshold, not the forget set's size;
    ``"all"`` when it is given a dataloader. Per-sample state is two ``Tensor[N]``.

    Args:
        dataloader: batches with ``input_ids``, ``attention_mask`` and ``sample_id`` to watch.
        every_n_train_steps: optimizer steps between scoring passes.
        refresh: ``"auto"``, ``"all"`` (every sample, each pass) or ``"above_threshold"`` (needs the datamodule's
            split).
        split: the datamodule split to watch when no dataloader is given; also the logging prefix.
        band: (lower, upper) edges of the acceptable g band, fractions in [0, 1].
        progress: show a progress bar during scoring passes.
        collateral_drop: a fall in g, a fraction in [0, 1], beyond which a sample counts in ``collateral``.
    """

    def __init__(
        self,
        dataloader: Any = None,
        every_n_train_steps: int = 1,
        split: str = "forget",
        band: tuple[float, float] = BAND,
        progress: bool = False,
        refresh: Literal["auto", "all", "above_threshold"] = "auto",
        collateral_drop: float = 0.1,
    ) -> None:
        if every_n_train_steps < 1:
            raise ConfigurationError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        if refresh not in ("auto", "all", "above_threshold"):
            raise ConfigurationError(f"refresh must be 'auto', 'all' or 'above_threshold', got {refresh!r}")
        if refresh == "above_threshold" and dataloader is not None:
            raise ConfigurationError(
                "refresh='above_threshold' scores subsets of the datamodule's split: pass no dataloader"
            )
        if refresh == "auto":
            refresh = "all" if dataloader is not None else "above_threshold"
        self.refresh_policy = refresh
        self.dataloader = dataloader
        self.every_n_train_steps = every_n_train_steps
        self.split = split
        self.band = band
        self.progress = progress
        self.collateral_drop = collateral_drop
        self.threshold: float | None = None  # set by MemorizationEarlyStopping once known
        self.floor: float | None = None  # below it a sample is over-forgotten; set by MemorizationEarlyStopping
        self.values = torch.empty(0)  # Tensor[N]: latest g per sample_id (NaN: never scored)
        self.start_values = torch.empty(0)  # Tensor[N]: g when training started
        self.scored_at = torch.empty(0, dtype=torch.long)  # Tensor[N]: optimizer step the score belongs to
        self._loop_covered_step: int | None = None  # last step whose training forward scored every sample
        self._datamodule: Any = None  # the UnlearningDataModule, for scoring subsets
        self.samples_scored = 0  # samples scored by scoring passes so far (the training forward's are free)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(split=self.split, every_n_train_steps=self.every_n_train_steps)

    @property
    def scores(self) -> dict[int, float]:
        """``{sample_id: g}`` for every scored sample."""
        seen = (~self.values.isnan()).nonzero().flatten()
        return dict(zip(seen.tolist(), self.values[seen].tolist(), strict=True))

    def is_fresh(self, step: int) -> bool:
        """Whether every sample's score belongs to the weights after ``step`` optimizer steps."""
        return len(self.scored_at) > 0 and bool((self.scored_at == step).all())

    def is_current(self, step: int) -> bool:
        """Whether the scores are as fresh as the refresh policy keeps them: every one from ``step``, or, with
        ``refresh="above_threshold"``, every older one at or below the threshold (assumed still forgotten)."""
        if self.is_fresh(step):
            return True
        if self.refresh_policy != "above_threshold" or self.threshold is None or len(self.values) == 0:
            return False
        stale = self.scored_at != step
        return bool((self.values[stale] <= self.threshold).all())

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        get_model(pl_module)
        if self.dataloader is None:
            datamodule = trainer.datamodule
            if datamodule is None or not hasattr(datamodule, "scoring_dataloader"):
                raise ConfigurationError(
                    "MemorizationMonitor has no dataloader: pass one, or fit with an UnlearningDataModule"
                )
            self._datamodule = datamodule
            self.dataloader = datamodule.scoring_dataloader(self.split)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.is_fresh(trainer.global_step):
            self.refresh(trainer, pl_module, log=False)  # logged with the first step
        if len(self.start_values) == 0:  # not restored from a checkpoint
            self.start_values = self.values.clone()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.refresh_if_due(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.is_fresh(trainer.global_step):  # the last step's effect, so `.scores` describe the result
            self.refresh(trainer, pl_module, log=False)
        if trainer.global_rank == 0:
            self.log_per_sample(trainer)

    def log_per_sample(self, trainer: L.Trainer) -> None:
        """Each sample's g when training started and now, to the Trainer's loggers: a table ``{split}/per_sample``
        for loggers that take one (``log_table``, as W&B's), and ``{split}_per_sample.csv`` in each logger's
        folder (``log_dir``), written whole or not at all."""
        start = self.start_values.tolist() + [float("nan")] * (len(self.values) - len(self.start_values))
        rows = [[i, start[i], end] for i, end in enumerate(self.values.tolist())]
        columns = ["sample_id", "g_start", "g_end"]
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table(key=f"{self.split}/per_sample", columns=columns, data=rows)
            folder = getattr(logger, "log_dir", None)
            if folder:
                lines = [",".join(columns)] + [f"{i},{g0!r},{g1!r}" for i, g0, g1 in rows]
                write_text_atomically(Path(folder) / f"{self.split}_per_sample.csv", "\n".join(lines) + "\n")

    def refresh_if_due(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A scoring pass, if N steps have passed and the training forward does not keep every score fresh; with
        ``refresh="above_threshold"``, of the samples still above the threshold only."""
        step = trainer.global_step
        if step % self.every_n_train_steps or self.is_fresh(step) or self._loop_covered_step == step - 1:
            return  # the next training forward scores every sample anyway
        if self.refresh_policy == "above_threshold" and self.threshold is not None and len(self.values):
            due = ((self.values > self.threshold) & (self.scored_at != step)).nonzero().flatten()
            if len(due):
                self.refresh(trainer, pl_module, sample_ids=due)
            return
        self.refresh(trainer, pl_module)

    def refresh(
        self, trainer: L.Trainer, pl_module: L.LightningModule, log: bool = True, sample_ids: Tensor | None = None
    ) -> None:
        """Scores the whole watched set now, or only ``sample_ids`` (every process takes part)."""
        loader = self.dataloader
        if sample_ids is not None and self._datamodule is not None:  # else: the whole given dataloader
            loader = self._datamodule.scoring_dataloader(self.split, sample_ids=sample_ids.tolist())
        with getattr(pl_module, "scoring_context", nullcontext)():  # e.g. task arithmetic scores its edit
            ids, values = None, None
            for model in self._models(pl_module):  # a record's g: its largest over them
                ids, scored = score_on_all_ranks(
                    model, loader, trainer.strategy, self.progress, desc=f"{self.split} memorization"
                )
                values = scored if values is None else torch.maximum(values, scored)
        self.samples_scored += len(ids)
        self._store(ids, values, trainer.global_step)
        if log:
            self.log_summary(pl_module)

    def _models(self, pl_module: L.LightningModule) -> list[torch.nn.Module]:
        """What the forget set is scored on: the module's ``scoring_models()`` when it has them (the relearning-aware
        module's attacked copy too), else its model; other splits always on the model alone."""
        if self.split == "forget" and hasattr(pl_module, "scoring_models"):
            return pl_module.scoring_models()
        return [get_model(pl_module)]

    def refresh_stale(self, trainer: L.Trainer, pl_module: L.LightningModule, sample_ids: Tensor | None = None) -> None:
        """Re-scores every sample (or every one of ``sample_ids``, the same on every process) whose score is older
        than the current step (no pass when there is none)."""
        stale = (self.scored_at != trainer.global_step).nonzero().flatten()
        if sample_ids is not None:
            stale = stale[torch.isin(stale, sample_ids)]
        if len(stale):
            self.refresh(trainer, pl_module, log=False, sample_ids=stale)

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule, sample_id: Tensor, g: Tensor) -> Tensor:
        """Takes the g of a training batch (this process's share), gathered over processes; returns all ids."""
        ids, values = gather_scores(trainer.strategy, sample_id, g.detach().float())
        self._store(ids.cpu(), values.cpu(), trainer.global_step)
        if len(ids) == int((~self.values.isnan()).sum()) and trainer.accumulate_grad_batches == 1:
            self._loop_covered_step = trainer.global_step  # this forward alone scored every sample
        self.log_summary(pl_module)
        return ids

    def carry_forward(self, step: int, to_step: int) -> None:
        """Scores of ``step`` also hold at ``to_step`` (the weights did not change in between)."""
        self.scored_at[self.scored_at == step] = to_step

    def _store(self, ids: Tensor, values: Tensor, step: int) -> None:
        size = int(ids.max()) + 1 if len(ids) else 0
        if size > len(self.values):
            grown = torch.full((size,), float("nan"), dtype=torch.float32)  # also under bf16-true
            grown[: len(self.values)] = self.values
            self.values = grown
            grown_at = torch.full((size,), -1, dtype=torch.long)
            grown_at[: len(self.scored_at)] = self.scored_at
            self.scored_at = grown_at
        self.values[ids] = values
        self.scored_at[ids] = step

    def summary(self) -> dict[str, float]:
        """The aggregates this monitor logs, over every scored sample."""
        g = self.values[~self.values.isnan()]
        lower, upper = self.band
        above, below = int((g >= upper).sum()), int((g <= lower).sum())
        metrics = {
            "g_mean": g.mean().item(),
            "g_max": g.max().item(),
            "outliers_above": above,
            "outliers_below": below,
            "outliers": above + below,
        }
        if self.threshold is not None:
            metrics["above_threshold"] = int((g > self.threshold).sum())
        if self.floor is not None:
            metrics["over_forgotten"] = int((g < self.floor).sum())
        if len(self.start_values):
            metrics["collateral"] = int(self.lost(self.collateral_drop).sum())
        return metrics

    def lost(self, drop: float) -> Tensor:
        """``BoolTensor[N]``: which samples' g fell by more than ``drop`` since training started."""
        count = min(len(self.values), len(self.start_values))
        return (self.start_values[:count] - self.values[:count]) > drop

    def log_summary(self, pl_module: L.LightningModule) -> None:
        """Logs :meth:`summary` under ``{split}/`` (the values are the same on every process); for the forget
        split, the max g, the records above the threshold and the threshold also go to the progress bar."""
        metrics = {f"{self.split}/{k}": float(v) for k, v in self.summary().items()}
        shown = {key: metrics.pop(key) for key in PROGRESS_BAR_KEYS if key in metrics} if self.split == "forget" else {}
        if self.split == "forget" and self.threshold is not None:
            shown["forget/threshold"] = float(self.threshold)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        if shown:
            pl_module.log_dict(shown, on_step=True, on_epoch=False, batch_size=1, prog_bar=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "values": self.values.clone(),
            "scored_at": self.scored_at.clone(),
            "start_values": self.start_values.clone(),
            "threshold": self.threshold,
            "floor": self.floor,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.values = state_dict["values"].clone()
        self.scored_at = state_dict["scored_at"].clone()
        self.start_values = state_dict.get("start_values", torch.empty(0)).clone()
        self.threshold = state_dict["threshold"]
        self.floor = state_dict.get("floor")


def monitors_of(trainer: L.Trainer, split: str = "forget") -> list[MemorizationMonitor]:
    """The trainer's MemorizationMonitors of ``split`` (none, one or more)."""
    return [cb for cb in trainer.callbacks if isinstance(cb, MemorizationMonitor) and cb.split == split]


def find_monitor(trainer: L.Trainer, split: str = "forget") -> MemorizationMonitor:
    """The trainer's MemorizationMonitor of ``split``; a clear error when there is none."""
    for callback in trainer.callbacks:
        if isinstance(callback, MemorizationMonitor) and callback.split == split:
            return callback
    raise ConfigurationError(
        f"no MemorizationMonitor watches the {split} split: add `MemorizationMonitor()` to the callbacks"
    )
