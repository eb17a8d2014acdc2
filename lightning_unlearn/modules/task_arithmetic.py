"""Task arithmetic for unlearning: TA (fine-tune on the forget set, subtract the task vector) and TAU (SGA, then TA)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_unlearn.callbacks import MemorizationEarlyStopping, SelectiveAscent
from lightning_unlearn.callbacks.control import brought_monitors, users_or_own
from lightning_unlearn.callbacks.monitor import find_monitor
from lightning_unlearn.distributed.zero import local_shards, release_gathered_parameters
from lightning_unlearn.integrations.peft import (
    adapter_parameter_names,
    add_frozen_adapter,
    check_plain_lora,
    check_task_arithmetic,
    is_adapted,
    move_adapter,
    task_vector_names,
)
from lightning_unlearn.modules.base import UnlearningModule
from lightning_unlearn.modules.registry import register
from lightning_unlearn.modules.step import ForwardOutput
from lightning_unlearn.modules.task_vectors import edit, edited, load_parameters, snapshot
from lightning_unlearn.utilities.errors import ConfigurationError

#: TAU with an adapter: the selective-ascent phase's adapter, frozen at the switch
ASCENT_ADAPTER = "ascent"


class TaskArithmetic(UnlearningModule):
    """TA: fine-tune (gradient *descent*) on the forget set from θ_base, and score the **edited** model
    θ_base + λ·(θ − θ_base), λ = ``scale`` < 0, after every step; stop when the rule holds for the edit.

    θ_base is a copy of the edited weights where they are (on the accelerator); scoring applies the edit in place,
    scores, and restores the weights bit for bit from one more such copy, so nothing goes to the host in a step. After
    ``fit``, ``.model`` *is* the edited model (``save_pretrained`` saves the edit) and ``.scale`` the λ used.

    With a LoRA adapter (``peft=``) the task vector is the adapter's update ΔW = (α/r)·B·A, and the edit
    θ_base + λ·ΔW is B scaled by λ (B starts at 0; A is kept): θ_base and the edit touch the adapter's B factors
    only, never the base model.
    With ``search_scale=True``, λ is then bisected in [scale, 0) to the value closest to 0 for which the rule
    still holds (scoring passes only, no training), since a smaller ``|λ|`` costs less utility.

    Args:
        scale: λ, negative.
        search_scale: search the smallest ``|λ|`` that satisfies the rule after training.
        search_steps: bisection steps (each one scoring pass).
        threshold: ``"holdout_quantile"``, ``"holdout_mean"`` or a fraction in [0, 1], for
            :class:`MemorizationEarlyStopping`.
        quantile: for ``threshold="holdout_quantile"``.
        criterion: ``"max"`` (every sample) or ``"mean"``.
        learning_rate: Adam's, for the descent on the forget set (the seed paper's 5e-5, with betas (0.9, 0.98);
            the testbed's settings use 3e-4).
        **kwargs: :class:`UnlearningModule` arguments, without a retain term: the task vector is learned on the
            forget set and subtracted, so a retain term learned with it would be subtracted too.
    """

    retain_losses = (None,)  # a retain term trained into the task vector would be subtracted with it
    takes_adversary = (
        "it fine-tunes towards the forget set and subtracts the result, so there is no forget loss to take at another "
        "point. Use SelectiveGradientAscent or NPO"
    )

    def __init__(
        self,
        model: Any,
        scale: float = -3.0,
        search_scale: bool = False,
        search_steps: int = 8,
        threshold: str | float = "holdout_quantile",
        quantile: float = 0.95,
        criterion: Literal["max", "mean"] = "max",
        learning_rate: float = 5e-5,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, learning_rate=learning_rate, **kwargs)
        if scale >= 0:
            raise ConfigurationError(f"scale must be negative (the task vector is subtracted), got {scale}")
        self.scale = scale
        self.search_scale = search_scale
        self.search_steps = search_steps
        self.stopping = MemorizationEarlyStopping(criterion=criterion, threshold=threshold, quantile=quantile)
        self.base: dict[str, Tensor] | None = None  # θ_base, where the weights are

    def configure_callbacks(self) -> list[Callback]:
        self.stopping = users_or_own(self, self.stopping)
        return [*brought_monitors(self), self.stopping]

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.base is None:  # not restored from a checkpoint
            check_task_arithmetic(self.model)
            self.base = snapshot(self.model, names=task_vector_names(self.model))

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        return nll  # descent: the task vector points towards the forget set

    def scores_in_training_step(self) -> bool:
        return False  # the training forward scores θ, not the edit: the monitor scores the edit after each step

    @contextmanager
    def scoring_context(self) -> Iterator[None]:
        """While scoring, the model is the edit θ_base + λ·(θ − θ_base). Under ZeRO-3 the parameters that the
        scoring passes leave gathered are released on both sides, so the passes see the edited shards and training
        the restored ones."""
        if self.base is None:
            yield
            return
        release_gathered_parameters(self.trainer.strategy)
        try:
            with edited(self.model, self.base, self.scale):
                yield
                release_gathered_parameters(self.trainer.strategy)
        finally:
            release_gathered_parameters(self.trainer.strategy)

    def on_train_end(self) -> None:
        if self.base is None:
            return
        if self.search_scale:
            self._search_scale()
        edit(self.model, self.base, self.scale)
        self.base = None  # the model is the edit now
        rank_zero_info(f"{type(self).__name__}: the model is θ_base + {self.scale:.4g}·τ")

    def _search_scale(self) -> None:
        """Bisection for the λ in [scale, 0) closest to 0 at which the stop rule holds (if it holds at scale)."""
        trainer, monitor = self.trainer, find_monitor(self.trainer)
        monitor.refresh(trainer, self, log=False)
        if not self.stopping.holds(trainer)[0]:
            return
        holds_at, fails_at = self.scale, 0.0
        for _ in range(self.search_steps):
            self.scale = (holds_at + fails_at) / 2
            monitor.refresh(trainer, self, log=False)
            if self.stopping.holds(trainer)[0]:
                holds_at = self.scale
            else:
                fails_at = self.scale
        self.scale = holds_at
        monitor.refresh(trainer, self, log=False)  # the scores of the chosen edit

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        shards = self.checkpoint_shards()
        base = None if self.base is None else shards.put(checkpoint, "task_arithmetic_base", self.base)
        checkpoint["task_arithmetic"] = {"base": base, "scale": self.scale}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("task_arithmetic", {})
        self.scale = state.get("scale", self.scale)
        self.base = self.checkpoint_shards().take(checkpoint, "task_arithmetic_base", state.get("base"))


register("ta", TaskArithmetic, "task arithmetic, λ = −3")  # lr 5e-5, the seed paper's (the module's default)


class TAU(TaskArithmetic):
    """TAU (Barbulescu & Triantafillou 2024): SGA until the forget set's mean g <= ``switch_at``, then TA with
    the SGA model as θ_base. The switch happens once; its step is ``switch_step`` and is logged as
    ``tau/switch_step``.

    The TA phase edits with λ = ``scale`` (default −3) and, once the rule holds, bisects λ back towards 0
    (``search_scale=True``): the result is the λ in [scale, 0) closest to 0 that meets the rule. The paper's λ = −1
    (``scale=-1.0, search_scale=False``) can fall short for good: the descent phase's task vector stops growing once
    the forget set is memorized again, so an edit too weak to reach the rule then never does (on the demo's testbed
    of seed 1: 400 steps, 4 records above the threshold).

    With a LoRA adapter (``peft=``), the SGA phase trains the adapter; at the switch its weights move to a second,
    frozen adapter (``"ascent"``, active alongside from the start, zero until then), and the TA phase trains the
    first one again from B = 0: θ_base is the SGA model (base + ascent adapter), the task vector the first
    adapter's update, and the edit exact (see :class:`TaskArithmetic`). ``save_pretrained(merge=True)`` merges
    both; ``merge=False`` writes both, ``"ascent"`` in a subfolder of that name: load it onto the base with
    ``PeftModel.from_pretrained(base, path)``, ``.load_adapter(path / "ascent", "ascent")`` and
    ``.base_model.set_adapter(["default", "ascent"])``.

    Args:
        gamma, keep_top, mode: the SGA phase (see :class:`SelectiveGradientAscent`).
        switch_at: mean forget g, a fraction in [0, 1], at or below which TA takes over.
        scale: λ of the TA phase, negative.
        search_scale: after the rule holds, the smallest ``|λ|`` that still meets it.
        learning_rate: Adam's, for both phases (1e-4 meets the rule on the testbed).
        **kwargs: :class:`TaskArithmetic` arguments.
    """

    def __init__(
        self,
        model: Any,
        gamma: float = 0.7,
        switch_at: float = 0.5,
        scale: float = -3.0,
        search_scale: bool = True,
        keep_top: int = 1,
        mode: Literal["select", "proportional"] = "select",
        learning_rate: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, scale=scale, search_scale=search_scale, learning_rate=learning_rate, **kwargs)
        self.selective = SelectiveAscent(gamma=gamma, keep_top=keep_top, mode=mode)
        self.switch_at = switch_at
        self.switch_step: int | None = None

    def configure_callbacks(self) -> list[Callback]:
        self.selective, self.stopping = users_or_own(self, self.selective), users_or_own(self, self.stopping)
        return [
            *brought_monitors(self),
            self.selective,
            self.stopping,
        ]

    def configure_model(self) -> None:
        super().configure_model()
        if is_adapted(self.model) and ASCENT_ADAPTER not in self.model.peft_config:
            check_plain_lora(self.model, "TAU on an adapter")
            add_frozen_adapter(self.model, ASCENT_ADAPTER)

    def on_train_start(self) -> None:
        pass  # θ_base is the SGA model, taken at the switch

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        return nll if self.switch_step is not None else -nll

    def scores_in_training_step(self) -> bool:
        return self.switch_step is None  # the SGA phase scores its model; the TA phase, its edit

    def on_forget_scores(self) -> None:
        monitor = find_monitor(self.trainer)
        if monitor.is_current(self.global_step) and monitor.summary()["g_mean"] <= self.switch_at:
            self._switch(self.trainer)

    def _switch(self, trainer: L.Trainer) -> None:
        self.switch_step = self.global_step
        if is_adapted(self.model):  # the SGA model is base + "ascent"; the TA phase trains the first adapter anew
            move_adapter(self.model, self.model.active_adapters[0], ASCENT_ADAPTER)
        self.base = snapshot(self.model, names=task_vector_names(self.model))
        self.forget_weights.values.fill_(1.0)
        for optimizer in trainer.optimizers:  # a fresh Adam for the descent phase
            optimizer.state.clear()
        self.log("tau/switch_step", float(self.switch_step), batch_size=1)
        rank_zero_info(f"TAU: switching from selective ascent to task arithmetic at step {self.switch_step}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["task_arithmetic"]["switch_step"] = self.switch_step
        if is_adapted(self.model):  # frozen, so not in the state dict
            names = set(adapter_parameter_names(self.model, ASCENT_ADAPTER))
            ascent = {name: data for name, data in local_shards(self.model) if name in names}
            whole = self.checkpoint_shards().put(checkpoint, "ascent", ascent)
            if whole is not None:
                checkpoint["task_arithmetic"]["ascent"] = whole

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("task_arithmetic", {})
        self.switch_step = state.get("switch_step")
        ascent = self.checkpoint_shards().take(checkpoint, "ascent", state.get("ascent"))
        if ascent is not None:
            load_parameters(self.model, ascent)


register("tau", TAU, "SGA, then task arithmetic with λ searched in [−3, 0)")
