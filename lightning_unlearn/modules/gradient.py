"""Gradient-based unlearning: gradient ascent (Jang et al.), gradient difference, selective gradient ascent, and
the token-weighted ascents WGA and SatImp."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_unlearn.callbacks import MemorizationEarlyStopping, MemorizationMonitor, SelectiveAscent
from lightning_unlearn.callbacks.control import brought_monitors, per_sample_control, users_or_own
from lightning_unlearn.functional.losses import hit_token_ascent_loss, satimp_loss, wga_loss
from lightning_unlearn.modules.base import UnlearningModule
from lightning_unlearn.modules.registry import register
from lightning_unlearn.modules.step import ForwardOutput
from lightning_unlearn.utilities.errors import ConfigurationError


class GradientAscent(UnlearningModule):
    """GA (Jang et al. 2022): ascend the forget samples' NLL. Add ``MemorizationMonitor()`` and
    ``MemorizationEarlyStopping(criterion="mean", threshold="holdout_mean")`` to a Trainer for Jang's stop rule,
    or ``per_sample_control(select=False)`` for the per-sample one."""

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        return -nll


class GradientDifference(GradientAscent):
    """Ascend the forget NLL while descending the retain NLL: loss = −NLL(forget) + retain_weight · NLL(retain).

    Gradient ascent with ``retain_loss="nll"``.

    Args:
        retain_weight: weight of the retain term.
        retain_loss: ``"nll"`` (gradient difference) or ``"kl"``.
        **kwargs: :class:`UnlearningModule` arguments.
    """

    def __init__(
        self, model: Any, retain_weight: float = 1.0, retain_loss: Literal["nll", "kl"] = "nll", **kwargs: Any
    ) -> None:
        if retain_loss is None:
            raise ConfigurationError("GradientDifference needs a retain term; without one, use GradientAscent")
        super().__init__(model, retain_loss=retain_loss, retain_weight=retain_weight, **kwargs)


class SelectiveGradientAscent(GradientAscent):
    """SGA (Barbulescu & Triantafillou 2024): ascend only the samples still memorized at or above ``gamma``.

    Every forget sample is re-scored after every optimizer step; before each step, a sample's weight is 1 if its
    g >= gamma, else 0, and the ``keep_top`` most memorized of the batch are always kept. Training stops when the
    ``criterion`` holds: ``"max"`` (default) every forget sample at or below ``threshold``, ``"mean"`` their mean.
    Brings its callbacks (monitor, selective ascent, early stopping) through ``configure_callbacks``; a
    ``SelectiveAscent`` or ``MemorizationEarlyStopping`` given to the Trainer is used instead of its own. The same
    selection and rule apply to any method through :func:`~lightning_unlearn.callbacks.per_sample_control`.

    Args:
        gamma: memorization level at or above which a sample is ascended, a fraction in [0, 1).
        keep_top: samples always kept per step.
        threshold: ``"holdout_quantile"`` (the holdout's ``quantile`` of g, the per-sample rule's threshold),
            ``"holdout_mean"`` (the holdout's mean g, the paper's) or a fraction in [0, 1].
        quantile: for ``threshold="holdout_quantile"``.
        criterion: ``"max"`` or ``"mean"``.
        mode: ``"select"`` (0/1 weights, the paper) or ``"proportional"``.
        skip_forgotten: stop ascending a sample once it is at or below the threshold, even as the batch's top.
        tokens: which tokens of a selected sample are ascended: ``"all"`` (its mean token NLL, the paper) or
            ``"hits"`` (only those the model still predicts, g's hits:
            :func:`~lightning_unlearn.functional.losses.hit_token_ascent_loss`), which keeps a pretrained LM from
            pushing records far below unseen text.
        **kwargs: :class:`UnlearningModule` arguments (``retain_loss=``, ``retain_weight=``, …).
    """

    def __init__(
        self,
        model: Any,
        gamma: float = 0.7,
        keep_top: int = 1,
        threshold: str | float = "holdout_quantile",
        quantile: float = 0.95,
        criterion: Literal["max", "mean"] = "max",
        mode: Literal["select", "proportional"] = "select",
        skip_forgotten: bool = False,
        tokens: Literal["all", "hits"] = "all",
        **kwargs: Any,
    ) -> None:
        if tokens not in ("all", "hits"):
            raise ConfigurationError(f"tokens must be 'all' or 'hits', got {tokens!r}")
        super().__init__(model, **kwargs)
        self.tokens = tokens
        self.selective = SelectiveAscent(gamma=gamma, keep_top=keep_top, mode=mode, skip_forgotten=skip_forgotten)
        self.stopping = MemorizationEarlyStopping(criterion=criterion, threshold=threshold, quantile=quantile)

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        if self.tokens == "hits":
            return hit_token_ascent_loss(output.logits, batch["input_ids"], batch["attention_mask"])
        return -nll

    def configure_callbacks(self) -> list[Callback]:
        self.selective, self.stopping = users_or_own(self, self.selective), users_or_own(self, self.stopping)
        return [
            *brought_monitors(self),
            self.selective,
            self.stopping,
        ]


# tokens="hits": on a pretrained LM (SmolLM2-135M, docs/benchmarks.md) ascending whole records pushed them far below
# unseen text (LOSS AUC 0.18, holdout NLL 1.68x); ascending only the tokens still predicted met the same rule
# with AUC 0.55 and 1.07x (lr 5e-5, the seed paper's; KL weight 3).
register(
    "sga-kl",
    SelectiveGradientAscent,
    "selective gradient ascent on the tokens still predicted + KL to the original model (recommended)",
    retain_loss="kl",
    retain_weight=3.0,
    tokens="hits",
)
register("sga", SelectiveGradientAscent, "selective gradient ascent, no retain term (costs more utility)")
register(
    "sga-kl-ra",
    SelectiveGradientAscent,
    "relearning-aware SGA + KL: each step's loss after 4 simulated relearning steps (3x the time)",
    retain_loss="kl",
    retain_weight=5.0,
    adversary_steps=4,
    adversary_learning_rate=5e-4,
)
register(
    "sga-kl-sam",
    SelectiveGradientAscent,
    "sharpness-aware SGA + KL: each step's loss at the worst point within ρ = 0.05 of the weights (2x the time)",
    retain_loss="kl",
    retain_weight=3.0,
    sharpness=0.05,
)
register(
    "ga",
    GradientAscent,
    "gradient ascent, stopped by the per-sample rule",
    callbacks=lambda: per_sample_control(select=False),
)
register(
    "ga-mean",
    GradientAscent,
    "gradient ascent, stopped by the mean rule (Jang et al.): mean g at or below the holdout's mean",
    callbacks=lambda: [MemorizationMonitor(), MemorizationEarlyStopping(criterion="mean", threshold="holdout_mean")],
)
register(  # α 1, lr 1e-5: open-unlearning's GradDiff (its default unlearning rate on TOFU)
    "gd",
    GradientDifference,
    "gradient difference (ascent on the forget records, NLL descent on the retain records), per-sample rule",
    callbacks=lambda: per_sample_control(select=False),
    learning_rate=1e-5,
)


class WGA(UnlearningModule):
    """WGA (Wang et al. 2025, "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond"):
    gradient ascent with each token's NLL weighted by its probability to the power β
    (:func:`~lightning_unlearn.functional.losses.wga_loss`), so that tokens already unlikely stop being pushed.

    Args:
        beta: β >= 0 (the authors and open-unlearning: 1).
        **kwargs: :class:`UnlearningModule` arguments (open-unlearning pairs it with ``retain_loss="nll"``).
    """

    def __init__(self, model: Any, beta: float = 1.0, **kwargs: Any) -> None:
        if not beta >= 0:
            raise ConfigurationError(f"beta must be >= 0, got {beta}")
        super().__init__(model, **kwargs)
        self.beta = beta

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        return wga_loss(output.logits, batch["input_ids"], batch["attention_mask"], self.beta)


register(
    "wga",
    WGA,
    "selective WGA (token weights p^β, β = 1) + KL retain",
    callbacks=per_sample_control,
    retain_loss="kl",
    retain_weight=3.0,
)


class SatImp(UnlearningModule):
    """SatImp (Yang et al. 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning"): gradient
    ascent with token weights p^β1 · (1 − p)^β2 that combine saturation and importance
    (:func:`~lightning_unlearn.functional.losses.satimp_loss`).

    Args:
        beta1, beta2: the exponents (the authors: 5 and 1).
        **kwargs: :class:`UnlearningModule` arguments.
    """

    def __init__(self, model: Any, beta1: float = 5.0, beta2: float = 1.0, **kwargs: Any) -> None:
        if not (beta1 >= 0 and beta2 >= 0):
            raise ConfigurationError(f"beta1 and beta2 must be >= 0, got {beta1} and {beta2}")
        super().__init__(model, **kwargs)
        self.beta1, self.beta2 = beta1, beta2

    def forget_loss(self, batch: dict[str, Tensor], output: ForwardOutput, nll: Tensor) -> Tensor:
        return satimp_loss(output.logits, batch["input_ids"], batch["attention_mask"], self.beta1, self.beta2)


register(  # lr 1e-5: open-unlearning's unlearning rate on TOFU (SatImp's own config not re-read)
    "satimp",
    SatImp,
    "selective SatImp (token weights p^5 · (1 − p)) + KL retain, lr 1e-5",
    callbacks=per_sample_control,
    learning_rate=1e-5,
    retain_loss="kl",
    retain_weight=0.3,
)
