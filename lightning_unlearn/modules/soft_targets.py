"""Unlearning by cross-entropy against a soft target that gives the memorized token no (or less) mass: UNDIAL
(Dong et al. 2025), which distils the original model with the target token's logit lowered, and CE-U (Yang 2025),
which trains towards the model's own distribution without the target token."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_unlearn.callbacks.control import per_sample_control
from lightning_unlearn.functional.losses import ce_u_loss, undial_loss
from lightning_unlearn.modules.base import UnlearningModule
from lightning_unlearn.modules.registry import register
from lightning_unlearn.modules.step import ForwardOutput
from lightning_unlearn.utilities.errors import ConfigurationError


class UNDIAL(UnlearningModule):
    """UNDIAL (Dong et al. 2025, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large
    Language Models"): on forget records, distil the original model's next-token distribution with each target
    token's logit lowered by β (:func:`~lightning_unlearn.functional.losses.undial_loss`). The teacher is the model as
    it was when training started (:class:`~lightning_unlearn.modules.reference.ReferenceWeights`, no second model): one
    no-grad forward pass of it on each forget batch. The loss is bounded below, so it does not diverge as ascent does.

    Args:
        beta: β >= 0, the logit adjustment (the paper and open-unlearning: 10).
        learning_rate: Adam's (open-unlearning: 1e-4).
        **kwargs: :class:`UnlearningModule` arguments.
    """

    forget_uses_reference = True

    def __init__(self, model: Any, beta: float = 10.0, learning_rate: float = 1e-4, **kwargs: Any) -> None:
        if not beta >= 0:
            raise ConfigurationError(f"beta must be >= 0, got {beta}")
        super().__init__(model, learning_rate=learning_rate, **kwargs)
        self.beta = beta

    def forget_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {**batch, "reference_logits": self.reference.logits(self.model, batch)}

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        return undial_loss(
            output.logits, batch["reference_logits"], batch["input_ids"], batch["attention_mask"], self.beta
        )


register(  # lr 1e-4: Dong et al. 2025 (Llama-2 7B), open-unlearning searches 1e-5 to 3e-4
    "undial",
    UNDIAL,
    "selective UNDIAL (distil the original, target logit − 10) + KL retain, lr 1e-4",
    callbacks=per_sample_control,
    learning_rate=1e-4,
    retain_loss="kl",
    retain_weight=1.0,
)


class CEU(UnlearningModule):
    """CE-U (Yang 2025, "CE-U: Cross Entropy Unlearning"): on forget records, the cross-entropy against the model's
    own next-token distribution with the target token removed (:func:`~lightning_unlearn.functional.losses.ce_u_loss`).
    No reference model; its gradient on the logits is bounded (p − q), unlike gradient ascent's.

    Args:
        **kwargs: :class:`UnlearningModule` arguments.
    """

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        return ce_u_loss(output.logits, batch["input_ids"], batch["attention_mask"])


register(
    "ce-u",
    CEU,
    "selective CE-U (cross-entropy without the target token) + KL retain",
    callbacks=per_sample_control,
    retain_loss="kl",
    retain_weight=3.0,
)
