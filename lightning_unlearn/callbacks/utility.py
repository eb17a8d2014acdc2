"""UtilityEvaluation: lm-evaluation-harness tasks on the model being unlearned, before, during and after training."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_unlearn.distributed.zero import release_gathered_parameters
from lightning_unlearn.evaluation.utility import Results, Task, check_tasks, evaluate_utility, task_manager, task_name
from lightning_unlearn.integrations.huggingface import get_model
from lightning_unlearn.utilities.errors import ConfigurationError


class UtilityEvaluation(Callback):
    """Runs lm-eval ``tasks`` on the model when training starts, when it ends, and every
    ``every_n_train_steps`` optimizer steps if given; logs ``utility/<task>/<metric>`` to the Trainer's loggers.

    ``results`` is ``{"start": {task: {metric: value}}, "end": {...}, "steps": {step: {...}}}`` (``"steps"`` only
    with periodic runs) and is kept in checkpoints, so a resumed run keeps its start numbers and does not evaluate
    them again. See :func:`~lightning_unlearn.evaluation.utility.evaluate_utility` for how lm-eval is run: on the model
    in memory, with the global random states untouched, so a run with this callback ends with the same weights as one
    without it.

    With several processes, every process evaluates every task on the whole model, in the same order: under ZeRO-3
    each forward pass gathers parameters from all processes, so none may run a pass the others do not. Process 0's
    numbers are broadcast, so every process logs and keeps the same ones. This spends N processes on what one
    could do; an evaluation at start and end is small next to unlearning.

    Works on our modules and on any LightningModule with a ``model`` attribute or ``get_model()``.

    Args:
        tasks: lm-eval task names, or config dicts (the keys of a task YAML).
        include_path: a folder of task YAML files (only it is indexed; without one, lm-eval's built-in tasks).
        every_n_train_steps: also evaluate after every N optimizer steps (None: at start and end only).
        batch_size: requests per forward pass.
        limit: at most this many documents per task (a fraction in (0, 1): that share of each).
        tokenizer: the model's tokenizer (default: the module's ``tokenizer``, else the datamodule's).
        verbose: log each metric's start and end values when training ends.
        include_defaults: also index lm-eval's built-in tasks (default: only when there is no ``include_path``).
        progress: show lm-eval's progress bars (off: they would break the Trainer's).
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        include_path: str | os.PathLike | None = None,
        every_n_train_steps: int | None = None,
        batch_size: int = 16,
        limit: int | float | None = None,
        tokenizer: Any = None,
        verbose: bool = True,
        include_defaults: bool | None = None,
        progress: bool = False,
    ) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ConfigurationError(f"every_n_train_steps must be >= 1 or None, got {every_n_train_steps}")
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        self.tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        self.include_path = include_path
        self.include_defaults = include_defaults
        self.progress = progress
        self.every_n_train_steps = every_n_train_steps
        self.batch_size = batch_size
        self.limit = limit
        self.tokenizer = tokenizer
        self.verbose = verbose
        self.results: dict[str, Any] = {}
        self._manager: Any = None
        self._last_step: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(tasks=[task_name(t) for t in self.tasks])

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        get_model(pl_module)
        if self._manager is None:  # every error a user can fix, before any work
            self._manager = task_manager(self.include_path, self.include_defaults)
            check_tasks(self.tasks, self._manager)
        if self.tokenizer is None:
            self.tokenizer = getattr(pl_module, "tokenizer", None) or getattr(trainer.datamodule, "tokenizer", None)
        if self.tokenizer is None:
            raise ConfigurationError(
                "UtilityEvaluation needs the model's tokenizer: pass tokenizer=, or fit with a datamodule"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        if "start" not in self.results:  # not restored from a checkpoint
            self.results["start"] = self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self._last_step:  # no optimizer step since the last batch (gradient accumulation)
            return
        self._last_step = step
        if self.every_n_train_steps and step % self.every_n_train_steps == 0:
            self.results.setdefault("steps", {})[step] = self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.results["end"] = self.evaluate(trainer, pl_module)
        if self.verbose:
            start = self.results.get("start", {})
            changes = [
                f"{task}/{metric} {start[task][metric]:.4f} -> {value:.4f}"
                for task, values in self.results["end"].items()
                for metric, value in values.items()
                if metric in start.get(task, {})
            ]
            rank_zero_info("utility (lm-eval), start -> end: " + "; ".join(changes))

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Results:
        """Runs the tasks now (every process takes part), logs them, and returns their numbers (process 0's)."""
        with getattr(pl_module, "scoring_context", nullcontext)():  # task arithmetic evaluates its edit
            results = evaluate_utility(
                get_model(pl_module),
                self.tokenizer,
                self.tasks,
                batch_size=self.batch_size,
                limit=self.limit,
                manager=self._manager,
                progress=self.progress,
            )
        release_gathered_parameters(trainer.strategy)
        metrics = {f"utility/{task}/{key}": value for task, values in results.items() for key, value in values.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in metrics.items()})
        return results

    def state_dict(self) -> dict[str, Any]:
        return {"results": self.results}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = state_dict["results"]
