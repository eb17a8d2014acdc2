"""The retain term of every method: NLL or KL to the model before unlearning, on the retain split, and on one
device a backward pass of its own after the forget part's, so that the two passes' activations are never alive
together."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor

from lightning_unlearn.losses import token_kl
from lightning_unlearn.memorization import nll_and_accuracy, sequence_nll
from lightning_unlearn.reference import ReferenceWeights
from lightning_unlearn.strategies import release_gathered_parameters


def check_finite(loss: Tensor, step: int) -> None:
    """Raises a clear error on a NaN or infinite loss."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss ({loss.item()}) at step {step}: lower the learning rate or check the data"
        )


class RetainTerm:
    """The retain term's part of :class:`~lightning_unlearn.UnlearningModule` (a mixin over its state: the
    ``retain_loss`` and ``retain_weight`` hyperparameters, ``reference``, the step's normalizers)."""

    @property
    def needs_retain(self) -> bool:
        """Whether the method trains on the retain split too."""
        return self.hparams.get("retain_loss") is not None

    def retain_loss(self, batch: dict[str, Tensor], logits: Tensor, nll: Tensor) -> Tensor:
        """Per-sample loss to minimize on retain samples (``Tensor[B]``), weighted by ``retain_weight``: their mean
        token NLL for ``retain_loss="nll"``, their mean token KL(p_ref ‖ p_θ) for ``"kl"`` (the reference's logits
        are ``batch["reference_logits"]``)."""
        kind = self.hparams.get("retain_loss")
        if kind == "nll":
            return nll
        if kind == "kl":
            return token_kl(logits, batch["reference_logits"], batch["attention_mask"])
        raise NotImplementedError(f"{type(self).__name__} must define retain_loss() when needs_retain is True")

    def _retain_part(self, retain: dict[str, Tensor], scale: float) -> tuple[Tensor, dict[str, Tensor]]:
        """The retain term's share of the step's loss (normalized like the forget term's) and its metrics; the
        retain forward scores its batch for the retain monitors for free."""
        logits, head = self._logits(retain)
        # The built-in KL term does not use the NLL: taken without a graph, whose saved softmax would be alive at
        # the KL's peak.
        kl_only = self.hparams.get("retain_loss") == "kl" and type(self).retain_loss is RetainTerm.retain_loss
        scored = logits.detach() if kl_only else logits
        if self._monitors("retain"):
            nll, g = nll_and_accuracy(scored, retain["input_ids"], retain["attention_mask"], **head)
            for monitor in self._monitors("retain"):
                monitor.record(self.trainer, self, retain["sample_id"], g)
        else:
            nll = sequence_nll(scored, retain["input_ids"], retain["attention_mask"])
        term = self.retain_loss(retain, logits, nll)
        part = scale * self.hparams.get("retain_weight", 1.0) * term.sum() / self._window["retain_count"]
        return part, {"train/retain_nll": nll.detach().mean(), "train/retain_loss": term.detach().mean()}

    def _backward_per_part(self) -> bool:
        """Whether the retain part runs its own forward and backward after the forget part's backward, so that the
        activations of the two passes are never alive together: on one device, where a step may take two backward
        passes (DDP and DeepSpeed reduce gradients during the one backward pass they expect)."""
        return isinstance(self.trainer.strategy, SingleDeviceStrategy) and self.automatic_optimization

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """The forget part's backward, then (one device, a retain term) the retain part's forward and backward,
        scaled as Lightning scaled the first (gradient accumulation, a mixed-precision loss scaler)."""
        super().backward(loss, *args, **kwargs)
        if self._deferred is None:
            return
        retain, scale = self._deferred
        self._deferred = None
        with self.trainer.precision_plugin.forward_context():  # as training_step runs: autocast under mixed precision
            part, self._deferred_metrics = self._retain_part(self._with_reference(retain), scale)
        check_finite(part, self.global_step)
        part = part / self.trainer.accumulate_grad_batches
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        super().backward(scaler.scale(part) if scaler is not None else part, *args, **kwargs)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self._deferred_metrics:  # the retain part's, logged once its backward has run
            self.log_dict(self._deferred_metrics, on_step=True, on_epoch=False, batch_size=1)
            self._deferred_metrics = {}

    def _retain_batch(self, batch: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        """The step's retain batch."""
        if "retain" not in batch:
            raise KeyError(
                f"retain_loss={self.hparams.get('retain_loss')!r} needs training batches with a 'retain' batch: give "
                "the UnlearningDataModule a retain split"
            )
        return batch["retain"]

    def _with_reference(self, retain: dict[str, Tensor]) -> dict[str, Tensor]:
        """The retain batch with the reference's logits on it, for a KL retain term. The reference's weights are
        swapped in place, so this runs before any forward pass whose graph a backward pass will use."""
        if self.hparams.get("retain_loss") != "kl":
            return retain
        if self.reference is None:
            raise RuntimeError("the reference weights are taken at train start: call super().on_train_start()")
        return {**retain, "reference_logits": self._reference_logits(retain)}

    def _reference_logits(self, retain: dict[str, Tensor]) -> Tensor:
        """The reference's logits (``Tensor[B, T, V]``) on a retain batch, from the cache with ``cache_reference``."""
        if not self.hparams.get("cache_reference"):
            return self.reference.logits(self.model, retain)
        any_missing = partial(self.trainer.strategy.reduce_boolean_decision, all=False)
        return self._reference_cache.logits(self.reference, self.model, retain, any_missing)

    def _take_reference(self) -> None:
        """Keeps the reference weights (:attr:`uses_reference`): the model now, before the first step, or as a
        checkpoint restored it."""
        if not self.uses_reference or self.reference is not None:
            return
        release = partial(release_gathered_parameters, self.trainer.strategy)
        if self._reference_state is not None:  # resumed: the reference is the model before the first step
            self.reference = ReferenceWeights.from_state_dict(self._reference_state, self.model, release)
            self._reference_state = None
        else:
            self.reference = ReferenceWeights(self.model, release=release)
