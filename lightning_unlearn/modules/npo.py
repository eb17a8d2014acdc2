"""Negative preference optimization: NPO (Zhang et al. 2024) and its reference-free variant SimNPO (Fan et al. 2024)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_unlearn.callbacks.control import per_sample_control
from lightning_unlearn.evaluation.scoring import score_log_likelihood, score_on_all_ranks
from lightning_unlearn.functional.losses import npo_loss, simnpo_loss
from lightning_unlearn.functional.memorization import sequence_log_likelihood
from lightning_unlearn.modules.base import UnlearningModule
from lightning_unlearn.modules.registry import register
from lightning_unlearn.modules.step import ForwardOutput
from lightning_unlearn.utilities.errors import ConfigurationError


class NPO(UnlearningModule):
    """NPO: per forget sample, (2/β) · log(1 + (π_θ(x) / π_ref(x))^β), π the sequence likelihood.

    π_ref(x) is one number per forget sample: every process scores its share of the forget set with the model as
    it is when training starts, under the training's precision (autocast under mixed precision, so that
    log π_θ − log π_ref = 0 at the first step), the shares are gathered, and the result (``reference_log_likelihood``,
    ``Tensor[N]`` of log π_ref in nats, by ``sample_id``) is kept with the checkpoint. No second model is kept.
    Per-sample selection and the per-sample stop rule come from
    :func:`~lightning_unlearn.callbacks.per_sample_control`; a retain term from ``retain_loss=``.

    Args:
        beta: β > 0 (Zhang et al. 2024 and open-unlearning: 0.1; a smaller β behaves like gradient ascent for
            longer; the testbed's settings use 0.01, :data:`~lightning_unlearn.testbed.settings.TESTBED_SETTINGS`).
        learning_rate: Adam's (Zhang et al. 2024 and open-unlearning's NPO on TOFU: 1e-5).
        **kwargs: :class:`UnlearningModule` arguments.
    """

    def __init__(self, model: Any, beta: float = 0.1, learning_rate: float = 1e-5, **kwargs: Any) -> None:
        if not beta > 0:
            raise ConfigurationError(f"beta must be > 0, got {beta}")
        super().__init__(model, learning_rate=learning_rate, **kwargs)
        self.beta = beta
        self.reference_log_likelihood: Tensor | None = None  # Tensor[N]: log π_ref(x) by sample_id

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.reference_log_likelihood is not None:  # restored from a checkpoint
            return
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "scoring_dataloader"):
            raise ConfigurationError(
                "NPO scores π_ref of every forget sample at the start: fit with an UnlearningDataModule"
            )
        with self.trainer.precision_plugin.forward_context():  # as the training forward runs: log π_θ = log π_ref
            ids, values = score_on_all_ranks(
                self.model, datamodule.scoring_dataloader("forget"), self.trainer.strategy, measure=score_log_likelihood
            )
        reference = torch.full((int(ids.max()) + 1,), float("nan"), dtype=torch.float32)
        reference[ids] = values
        self.reference_log_likelihood = reference

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        ids = batch["sample_id"].cpu()
        if self.reference_log_likelihood is None or int(ids.max()) >= len(self.reference_log_likelihood):
            raise RuntimeError(
                "a forget sample has no reference likelihood: NPO scores the forget split at train start"
            )
        reference = self.reference_log_likelihood[ids].to(nll.device, nll.dtype)
        return npo_loss(sequence_log_likelihood(nll, batch["attention_mask"]), reference, self.beta)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["npo_reference_log_likelihood"] = self.reference_log_likelihood

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.reference_log_likelihood = checkpoint.get("npo_reference_log_likelihood")


# β 0.1, lr 1e-5: Zhang et al. 2024 and open-unlearning's NPO (the module's defaults)
register(
    "npo-kl",
    NPO,
    "selective NPO (β = 0.1) + KL retain",
    callbacks=per_sample_control,
    retain_loss="kl",
    retain_weight=1.0,
)


class SimNPO(UnlearningModule):
    """SimNPO: per forget sample, −(2/β) · log σ(β · (NLL_mean(x) − δ)); no reference model or likelihood.

    Args:
        beta: β > 0 (the paper: 4.5).
        delta: δ, the margin in nats per token (default 0).
        **kwargs: :class:`UnlearningModule` arguments.
    """

    def __init__(self, model: Any, beta: float = 4.5, delta: float = 0.0, **kwargs: Any) -> None:
        if not beta > 0:
            raise ConfigurationError(f"beta must be > 0, got {beta}")
        super().__init__(model, **kwargs)
        self.beta = beta
        self.delta = delta

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        return simnpo_loss(nll, self.beta, self.delta)


register(  # β 4.5, δ 0: Fan et al. 2024 (the module's defaults); lr 1e-5: open-unlearning on TOFU
    "simnpo-kl",
    SimNPO,
    "selective SimNPO (β = 4.5, no reference model) + KL retain",
    callbacks=per_sample_control,
    learning_rate=1e-5,
    retain_loss="kl",
    retain_weight=1.0,
)
